"""A YOLO dataset zip as evaluate's ground truth: images, each with a label .txt of the same stem
(beside it, or under a `labels/` folder mirroring `images/`), lines `class cx cy w h` normalised
to the image. Class names come from a data.yaml (`names`) or classes.txt in the zip, else the
model's own, by index. An image without a label file has no illustration (YOLO's convention).

Worker only (PIL). Sizes are checked before anything is decompressed: file count, each image's
pixels (Image.open reads the header only until load). With `analyse_side`, a page is decoded as
detect decodes an uploaded image (`decode_within`: shrunk once, JPEGs at reduced scale, within
the process's decode budget), so the model sees the pixels it would see in a detect task; boxes
stay in the full image's pixels and `scale` maps detections back.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from PIL import Image

from model.jobs import JobFailed
from model.jobs.evaluate.groundtruth import TruthBox
from model.pipeline.memory import process_budget
from model.sources.images import ImageDecodeError, decode_within

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}
MAX_MEMBER_BYTES = 64 * 1024 * 1024
TOLERANCE = 0.01  # normalised coordinates a little over 1 (rounding) are tolerated


@dataclass
class DatasetPage:
    name: str
    image: Any = None  # PIL image (RGB)
    size: tuple[int, int] = (0, 0)  # the full image's
    scale: float = 1.0  # decoded image / full image
    boxes: list[TruthBox] = field(default_factory=list)
    error: tuple[str, str] | None = None


def _names(archive: zipfile.ZipFile, members: list[str], model_classes: list[str]) -> list[str]:
    for member in members:
        base = PurePosixPath(member).name
        try:
            if base in ("data.yaml", "dataset.yaml"):
                names = yaml.safe_load(archive.read(member)).get("names")
                if isinstance(names, dict):
                    return [str(names[k]) for k in sorted(names)]
                if isinstance(names, list):
                    return [str(n) for n in names]
            if base == "classes.txt":
                return [n.strip() for n in archive.read(member).decode().splitlines() if n.strip()]
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError, KeyError, TypeError):
            raise JobFailed("invalid_dataset", f"{member}: unreadable class names") from None
    return model_classes


def _label_member(image: str, members: set[str]) -> str | None:
    path = PurePosixPath(image)
    beside = str(path.with_suffix(".txt"))
    parts = list(path.parts)
    mirrored = None
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        mirrored = str(PurePosixPath(*parts).with_suffix(".txt"))
    for candidate in (mirrored, beside):
        if candidate and candidate in members:
            return candidate
    return None


def _boxes(text: str, names: list[str], size: tuple[int, int], name: str) -> list[TruthBox]:
    width, height = size
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
            if len(fields) != 5:
                raise ValueError
        except ValueError:
            raise ValueError(("bad_label_line", f"line {number}: {line.strip()[:80]!r}")) from None
        if not 0 <= cls < len(names):
            raise ValueError(("unknown_class", f"line {number}: class {cls} of {len(names)}"))
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if w <= 0 or h <= 0 or min(x1, y1) < -TOLERANCE or max(x2, y2) > 1 + TOLERANCE:
            raise ValueError(("boxes_outside_canvas", f"line {number}: box outside the image"))
        box = (x1 * width, y1 * height, w * width, h * height)
        boxes.append(TruthBox(name, names[cls], box))
    return boxes


class Dataset:
    """The zip's pages, each decoded only when loaded (a batch at a time)."""

    def __init__(
        self,
        data: bytes,
        model_classes: list[str],
        max_images: int,
        max_pixels: int,
        analyse_side: int | None = None,
    ) -> None:
        try:
            self.archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise JobFailed("invalid_dataset", "the dataset upload is not a zip archive") from exc
        infos = [i for i in self.archive.infolist() if not i.is_dir()]
        self.sizes = {i.filename: i.file_size for i in infos}
        images = sorted(
            name
            for name in self.sizes
            if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
            and not PurePosixPath(name).name.startswith(".")
        )
        if not images:
            raise JobFailed("invalid_dataset", "the zip holds no image")
        if len(images) > max_images:
            raise JobFailed("too_many_images", f"at most {max_images} images per evaluate task")
        self.names = _names(self.archive, sorted(self.sizes), model_classes)
        self.max_pixels = max_pixels
        self.analyse_side = analyse_side
        self.pages = [DatasetPage(name) for name in images]
        self.labels = {name: _label_member(name, set(self.sizes)) for name in images}

    def load(self, page: DatasetPage) -> None:
        """Decode the page's image and read its boxes, or set its error."""
        label = self.labels[page.name]
        try:
            if self.sizes[page.name] > MAX_MEMBER_BYTES or (
                label and self.sizes[label] > MAX_MEMBER_BYTES
            ):
                raise ValueError(("too_large", f"over {MAX_MEMBER_BYTES} bytes uncompressed"))
            data = self.archive.read(page.name)
            if self.analyse_side:
                page.image, page.size, page.scale = decode_within(
                    data, self.max_pixels, self.analyse_side, process_budget(), reduce=True
                )
            else:
                image = Image.open(io.BytesIO(data))
                if image.width * image.height > self.max_pixels:
                    raise ValueError(("too_many_pixels", f"{image.width}x{image.height}"))
                page.image = image.convert("RGB")
                page.size = page.image.size
            if label:
                text = self.archive.read(label).decode("utf-8", errors="replace")
                page.boxes = _boxes(text, self.names, page.size, page.name)
        except ValueError as exc:
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], tuple) else None
            page.error, page.image = reason or ("undecodable", str(exc)), None
        except ImageDecodeError as exc:
            page.error, page.image = (exc.code, exc.message), None
        except (OSError, Image.DecompressionBombError, zipfile.BadZipFile) as exc:
            page.error, page.image = ("undecodable", f"{type(exc).__name__}: {exc}"), None

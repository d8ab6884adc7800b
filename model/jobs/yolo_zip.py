"""A YOLO dataset zip, read the same way for evaluate (ground truth) and train (training pages).

Layout: images anywhere in the zip (not dot-files), each with a label `.txt` of the same stem
under a `labels/` folder mirroring `images/`, else beside it, else the one `.txt` of that stem in
the zip; lines `class cx cy w h` normalised to the image. Class names from data.yaml /
dataset.yaml (`names`: a list or an index map) or classes.txt, else the caller's default.

What a job does with a page is its own (evaluate: an image without a label file has no
illustration; train: such a page is skipped), but a page's defects get the same codes in both
(`PageProblem`): `bad_label_line`, `unknown_class`, `boxes_outside_canvas`, `too_large`, and
`undecodable` from the jobs' image decoding. The zip as a whole is refused with a JobFailed:
`invalid_dataset` (not a zip, no image, unreadable class names), `too_many_images`,
`dataset_too_large` (files, or bytes once unpacked, over the caps; checked before anything is
decompressed).

Light (no PIL, no torch): decoding the images is each job's page loading.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import PurePosixPath

import yaml

from model.jobs import JobFailed

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
NAME_FILES = frozenset({"data.yaml", "dataset.yaml", "classes.txt"})
MAX_ENTRIES = 20_000  # files in a zip (images + labels + the rest)
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one image or label file, uncompressed
MAX_NAMES_BYTES = 1024 * 1024  # a data.yaml or classes.txt
TOLERANCE = 0.01  # normalised coordinates a little past the image (rounding) are tolerated

Box = tuple[float, float, float, float]  # x, y, w, h in the image's pixels


class PageProblem(ValueError):
    """Why one page of the zip cannot be used: a code shared by evaluate and train, and words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class YoloZip:
    """The zip's members, found and checked; a page's bytes are read only when asked for."""

    def __init__(self, data: bytes, max_images: int, max_bytes: int | None = None) -> None:
        try:
            self.archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise JobFailed("invalid_dataset", "the dataset is not a zip archive") from exc
        infos = [i for i in self.archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_ENTRIES:
            raise JobFailed("dataset_too_large", f"at most {MAX_ENTRIES} files in a dataset zip")
        self.sizes = {i.filename: i.file_size for i in infos}
        if max_bytes is not None and sum(self.sizes.values()) > max_bytes:
            raise JobFailed("dataset_too_large", f"a dataset may unpack to {max_bytes} bytes")
        paths = {name: PurePosixPath(name) for name in self.sizes}
        self.images = sorted(
            name
            for name, path in paths.items()
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        )
        if not self.images:
            raise JobFailed("invalid_dataset", "the dataset zip holds no image")
        if len(self.images) > max_images:
            raise JobFailed("too_many_images", f"at most {max_images} images in this task")
        texts = {n for n, p in paths.items() if p.suffix == ".txt" and p.name not in NAME_FILES}
        by_stem = Counter(paths[n].stem for n in texts)
        unique = {paths[n].stem: n for n in texts if by_stem[paths[n].stem] == 1}
        self.labels = {name: _label_member(paths[name], texts, unique) for name in self.images}

    def class_names(self) -> list[str] | None:
        """The names of data.yaml, dataset.yaml or classes.txt (the first in name order)."""
        for member in sorted(self.sizes):
            base = PurePosixPath(member).name
            if base not in NAME_FILES:
                continue
            if self.sizes[member] > MAX_NAMES_BYTES:
                raise JobFailed("invalid_dataset", f"{member}: over {MAX_NAMES_BYTES} bytes")
            try:
                text = self.archive.read(member).decode()
                if base == "classes.txt":
                    return [n.strip() for n in text.splitlines() if n.strip()]
                names = yaml.safe_load(text).get("names")
                if isinstance(names, dict):
                    names = [names[k] for k in sorted(names)]
                # Scalars only: aliases could make a tiny file a huge nested structure.
                if isinstance(names, list) and all(isinstance(n, str | int | float) for n in names):
                    return [str(n) for n in names]
            except (yaml.YAMLError, AttributeError, UnicodeDecodeError, TypeError) as exc:
                raise JobFailed("invalid_dataset", f"{member}: unreadable class names") from exc
            raise JobFailed("invalid_dataset", f"{member}: `names` is not a list of names")
        return None

    def most_class(self) -> int:
        """The highest class index of any label line (at most 999): names when none are given."""
        found = 0
        for member in {m for m in self.labels.values() if m}:
            if self.sizes[member] > MAX_MEMBER_BYTES:
                continue
            for line in self.archive.read(member).decode("utf-8", "replace").splitlines():
                head = line.split(maxsplit=1)[:1]
                if head and head[0].isdigit():
                    found = max(found, min(int(head[0]), 999))
        return found

    def read(self, member: str) -> bytes:
        if self.sizes[member] > MAX_MEMBER_BYTES:
            raise PageProblem("too_large", f"{member}: over {MAX_MEMBER_BYTES} bytes uncompressed")
        return self.archive.read(member)

    def boxes(
        self, image: str, names: list[str], size: tuple[int, int]
    ) -> list[tuple[str, Box]] | None:
        """The labelled boxes of an image of this size (None: it has no label file)."""
        member = self.labels[image]
        if member is None:
            return None
        return parse_labels(self.read(member).decode("utf-8", "replace"), names, size)


def _label_member(image: PurePosixPath, texts: set[str], unique: dict[str, str]) -> str | None:
    parts = list(image.parts)
    candidates = []
    if "images" in parts:  # labels/ mirroring images/ (the innermost `images`)
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        candidates.append(str(PurePosixPath(*parts).with_suffix(".txt")))
    candidates += [str(image.with_suffix(".txt")), unique.get(image.stem)]
    return next((c for c in candidates if c in texts), None)


def parse_labels(text: str, names: list[str], size: tuple[int, int]) -> list[tuple[str, Box]]:
    """A YOLO label file's boxes in pixels of an image of `size`, with their labels; raises
    PageProblem for the first line that cannot be used."""
    width, height = size
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:])
        except ValueError:
            raise PageProblem(
                "bad_label_line", f"line {number}: {line.strip()[:80]!r}, not 'class cx cy w h'"
            ) from None
        if not 0 <= cls < len(names):
            raise PageProblem(
                "unknown_class", f"line {number}: class {cls} is not one of the {len(names)} names"
            )
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if w <= 0 or h <= 0 or min(x1, y1) < -TOLERANCE or max(x2, y2) > 1 + TOLERANCE:
            raise PageProblem("boxes_outside_canvas", f"line {number}: box outside the image")
        boxes.append((names[cls], (x1 * width, y1 * height, w * width, h * height)))
    return boxes

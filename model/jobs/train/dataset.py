"""Annotated pages for training: read a YOLO dataset zip, check it, split it, write it out (IIIF
ground truth becomes the same Dataset in model/jobs/train/iiif.py).

Torch-free (PIL, zipfile). A page that cannot be used gets a reason and is left out; a dataset
with nothing left to train on is refused as a whole (`DatasetError`, a 4xx-style code).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from model.jobs import JobFailed
from model.jobs.train.yolo_data import (
    IMAGE_SUFFIXES,
    link_split,
    split_stems,
    write_page,
    write_yaml,
)

MAX_ENTRIES = 20_000  # files in a zip (images + labels + the rest)


class DatasetError(JobFailed):
    """The dataset as a whole is unusable: code and message for the task's error."""


@dataclass
class Page:
    """One annotated page: the image's bytes and its boxes in pixels (x, y, w, h) with labels."""

    name: str
    data: bytes
    size: tuple[int, int]
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    source: str = ""  # where it came from, when not its name (a IIIF canvas id)


@dataclass
class Dataset:
    pages: list[Page]
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"page", "reason"}
    # What was wrong in IIIF annotations besides pages (unreadable lists, unknown canvases).
    problems: list[dict[str, str]] = field(default_factory=list)  # {"code", "message"}

    def source_of(self, name: str) -> str:
        return next((p.source or p.name for p in self.pages if p.name == name), name)

    def digest(self) -> str:
        """sha256 over the pages' bytes and boxes, in name order: same data, same digest."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for page in sorted(self.pages, key=lambda p: p.name):
            h.update(page.name.encode() + b"\0" + hashlib.sha256(page.data).digest())
            h.update(json.dumps([page.boxes, page.labels]).encode())
        return h.hexdigest()


def _names_from_yaml(text: str) -> list[str] | None:
    """Class names of a YOLO data.yaml: `names: [a, b]` or `names:` followed by `  0: a` lines.

    A small reader on purpose: a yaml from a stranger is never handed to a full YAML loader."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("names:"):
            continue
        rest = line[len("names:") :].strip()
        if rest.startswith("["):
            return [n.strip().strip("'\"") for n in rest.strip("[]").split(",") if n.strip()]
        names: dict[int, str] = {}
        for item in lines[i + 1 :]:
            if not item.startswith((" ", "\t")) or ":" not in item:
                break
            key, value = item.split(":", 1)
            if key.strip().isdigit():
                names[int(key.strip())] = value.strip().strip("'\"")
        return [names[k] for k in sorted(names)] if names else None
    return None


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _parse_labels(text: str, size: tuple[int, int], classes: list[str]) -> Page | str:
    """Boxes of one YOLO label file, or the reason the page cannot be used."""
    w, h = size
    boxes, labels = [], []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            return f"line {n}: expected 'class cx cy w h'"
        try:
            cls = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError:
            return f"line {n}: not numbers"
        if not 0 <= cls < len(classes):
            return f"line {n}: class {cls} is not one of the {len(classes)} names"
        if bw <= 0 or bh <= 0 or cx - bw / 2 < -0.01 or cy - bh / 2 < -0.01:
            return f"line {n}: box outside the image"
        if cx + bw / 2 > 1.01 or cy + bh / 2 > 1.01:
            return f"line {n}: box outside the image"
        boxes.append(((cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h))
        labels.append(classes[cls])
    if not boxes:
        return "no boxes"
    return Page("", b"", size, boxes, labels)


def read_yolo_zip(data: bytes, max_pages: int, max_bytes: int) -> Dataset:
    """Images anywhere in the zip, each with the label file of the same stem (in a `labels`
    folder or beside it); class names from data.yaml or classes.txt, else `class<N>`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DatasetError("bad_dataset", "the dataset is not a zip file") from exc
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > MAX_ENTRIES:
        raise DatasetError("dataset_too_large", f"at most {MAX_ENTRIES} files in a dataset zip")
    if sum(i.file_size for i in infos) > max_bytes:
        raise DatasetError("dataset_too_large", f"a dataset may unpack to {max_bytes} bytes")
    images: dict[str, zipfile.ZipInfo] = {}
    labels: dict[str, zipfile.ZipInfo] = {}
    classes: list[str] | None = None
    for info in infos:
        path = PurePosixPath(info.filename)
        if path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images[path.stem] = info
        elif path.suffix == ".txt" and path.name != "classes.txt":
            labels[path.stem] = info
        elif path.name in ("data.yaml", "dataset.yaml") and classes is None:
            classes = _names_from_yaml(archive.read(info).decode("utf-8", "replace"))
        elif path.name == "classes.txt" and classes is None:
            text = archive.read(info).decode("utf-8", "replace")
            classes = [c.strip() for c in text.splitlines() if c.strip()]
    if not images:
        raise DatasetError("no_pages", "the dataset zip holds no images")
    if len(images) > max_pages:
        raise DatasetError("too_many_pages", f"at most {max_pages} pages per training task")
    if classes is None:
        most = max((_max_class(archive, i) for i in labels.values()), default=0)
        classes = [f"class{n}" for n in range(most + 1)]
    pages, skipped = [], []
    for stem in sorted(images):
        blob = archive.read(images[stem])
        try:
            size = _image_size(blob)
        except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
            skipped.append({"page": stem, "reason": "not a readable image"})
            continue
        if stem not in labels:
            skipped.append({"page": stem, "reason": "no label file"})
            continue
        parsed = _parse_labels(archive.read(labels[stem]).decode("utf-8", "replace"), size, classes)
        if isinstance(parsed, str):
            skipped.append({"page": stem, "reason": parsed})
            continue
        pages.append(Page(stem, blob, size, parsed.boxes, parsed.labels))
    if len(pages) < 2:
        raise DatasetError(
            "too_few_pages",
            f"{len(pages)} usable annotated pages; training needs 2 at least "
            f"(skipped: {skipped[:5]})",
        )
    return Dataset(pages, classes, skipped)


def _max_class(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    found = 0
    for line in archive.read(info).decode("utf-8", "replace").splitlines():
        head = line.split(maxsplit=1)[:1]
        if head and head[0].isdigit():
            found = max(found, min(int(head[0]), 999))
    return found


@dataclass(frozen=True)
class Split:
    data_yaml: Path  # train + val, for ultralytics' train()
    val_yaml: Path  # the held-out split alone, for scoring base and new model
    train_pages: list[str]
    val_pages: list[str]


def write_split(
    dataset: Dataset, root: Path, val_fraction: float, seed: int, max_side: int
) -> Split:
    """Pages as a YOLO folder, split into train and held-out val (seeded, order-independent)."""
    index = {c: i for i, c in enumerate(dataset.classes)}
    for page in dataset.pages:
        with Image.open(io.BytesIO(page.data)) as img:
            ids = [index[label] for label in page.labels]
            write_page(root / "all", page.name, img.convert("RGB"), page.boxes, max_side, ids)
    train, val = split_stems([p.name for p in dataset.pages], val_fraction, seed)
    train_dir = link_split(root / "all", root / "train", train)
    val_dir = link_split(root / "all", root / "val", val)
    return Split(
        write_yaml(root / "data.yaml", train_dir, val_dir, dataset.classes),
        write_yaml(root / "val.yaml", val_dir, val_dir, dataset.classes),
        train,
        val,
    )


def yolo_zip(folder: Path, classes: Sequence[str]) -> bytes:
    """A YOLO dataset zip of a folder with images/ and labels/ (tests, benchmarks, clients)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        out.writestr(
            "data.yaml", "names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(classes))
        )
        for sub in ("images", "labels"):
            for path in sorted((folder / sub).iterdir()):
                out.write(path, f"{sub}/{path.name}")
    return buffer.getvalue()

"""Annotated pages for training: read a YOLO dataset zip (with evaluate's reader,
model/jobs/yolo_zip.py), check it, split it, write it out (IIIF ground truth becomes the same
Dataset in model/jobs/train/iiif.py).

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
from model.jobs.train.yolo_data import link_split, split_stems, write_page, write_yaml
from model.jobs.yolo_zip import PageProblem, YoloZip


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


def _image_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception as exc:
        raise PageProblem("undecodable", f"not a readable image ({type(exc).__name__})") from exc


def read_yolo_zip(data: bytes, max_pages: int, max_bytes: int) -> Dataset:
    """The zip as evaluate reads it (model/jobs/yolo_zip.py: layout, class names, the same
    codes for a page's defects); class names default to `class<N>`. A page is named by its
    file's stem; one without a label file or without a box is skipped too."""
    archive = YoloZip(data, max_pages, max_bytes)
    classes = archive.class_names() or [f"class{n}" for n in range(archive.most_class() + 1)]
    pages: list[Page] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for member in archive.images:
        stem = PurePosixPath(member).stem
        try:
            if stem in seen:
                raise PageProblem("duplicate_name", f"{member}: another image has this name")
            seen.add(stem)
            blob = archive.read(member)
            size = _image_size(blob)
            boxes = archive.boxes(member, classes, size)
            if boxes is None:
                raise PageProblem("no_label_file", f"{member}: no label file of its stem")
            if not boxes:
                raise PageProblem("no_boxes", "its label file holds no box")
        except PageProblem as problem:  # the same "code: message" as IIIF pages' (iiif.py)
            skipped.append({"page": stem, "reason": f"{problem.code}: {problem.message}"})
            continue
        labels, xywh = [label for label, _ in boxes], [box for _, box in boxes]
        pages.append(Page(stem, blob, size, xywh, labels))
    if len(pages) < 2:
        raise DatasetError(
            "too_few_pages",
            f"{len(pages)} usable annotated pages; training needs 2 at least "
            f"(skipped: {skipped[:5]})",
        )
    return Dataset(pages, classes, skipped)


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

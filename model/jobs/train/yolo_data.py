"""YOLO dataset files: one image and one label file per page, and the data yaml. Torch-free."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

CLASS_NAMES = ["illustration"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


def write_page(
    folder: Path,
    stem: str,
    image: Image.Image,
    boxes: Sequence[tuple[float, float, float, float]],
    max_side: int = 0,
    classes: Sequence[int] | None = None,
) -> Path:
    """Save image (shrunk to max_side when larger) and its normalized xywh boxes (pixels in)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    w, h = image.size
    if max_side and max(w, h) > max_side:
        k = max_side / max(w, h)
        image = image.resize((round(w * k), round(h * k)), Image.Resampling.LANCZOS)
    path = folder / "images" / f"{stem}.jpg"
    image.convert("RGB").save(path, quality=90)
    lines = [
        f"{classes[i] if classes else 0} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
        f"{bw / w:.6f} {bh / h:.6f}"
        for i, (x, y, bw, bh) in enumerate(boxes)
    ]
    (folder / "labels" / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    return path


def write_yaml(path: Path, train: Path, val: Path, names: Sequence[str]) -> Path:
    """An ultralytics data yaml; JSON is valid YAML and quotes any odd class name safely."""
    doc = {
        "train": str(train / "images"),
        "val": str(val / "images"),
        "names": dict(enumerate(names)),
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def images_of(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def split_stems(
    stems: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A seeded train/val split of page stems: at least one page each side when there are two.

    Sorted first, so the split depends on the pages and the seed, never on listing order.
    """
    import random

    ordered = sorted(stems)
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * val_fraction)
    if len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    return sorted(ordered[n_val:]), sorted(ordered[:n_val])


def link_split(src: Path, dst: Path, stems: Sequence[str]) -> Path:
    """dst/images and dst/labels holding the given pages of src (hard links, else copies)."""
    import shutil

    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    by_stem = {p.stem: p for p in images_of(src)}
    for stem in stems:
        pairs = ((by_stem[stem], dst / "images" / by_stem[stem].name),)
        label = src / "labels" / f"{stem}.txt"
        pairs += ((label, dst / "labels" / label.name),) if label.exists() else ()
        for a, b in pairs:
            try:
                os.link(a, b)
            except OSError:
                shutil.copyfile(a, b)
    return dst

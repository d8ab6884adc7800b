"""The domain-shift benchmark: 40 training and 40 held-out woodcut pages as YOLO datasets.

Pages come from synthetic/woodcut.py (a style the shipped detector never saw); the two
splits use disjoint seeds and every size is drawn from a seeded stream, so a given `seed`
always writes the same files. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.jobs.train.yolo_data import CLASS_NAMES, write_page, write_yaml
from synthetic.woodcut import render_woodcut_page

TRAIN_PAGES = 40
HELDOUT_PAGES = 40
WIDTHS = (800, 1400)  # page widths (px); heights 1.3-1.5x
MAX_SIDE = 832  # files are stored at most this long (2x the shipped model's input)


@dataclass(frozen=True)
class Benchmark:
    root: Path
    train: Path  # folder with images/ and labels/
    heldout: Path
    heldout_yaml: Path
    boxes: dict[str, int]


def build(
    root: Path, seed: int = 0, train: int = TRAIN_PAGES, heldout: int = HELDOUT_PAGES
) -> Benchmark:
    """Render both splits under root (train/, heldout/) and a YOLO yaml for the held-out pages."""
    boxes: dict[str, int] = {}
    base = seed * 1_000_000
    for k, (split, first, count) in enumerate(
        (("train", base, train), ("heldout", base + 500_000, heldout))
    ):
        rng = np.random.default_rng([seed, 2023, k])  # per split: held-out pages never depend
        n = 0  # on how many training pages were drawn
        for page_seed in range(first, first + count):
            w = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
            h = int(w * rng.uniform(1.3, 1.5))
            page = render_woodcut_page(page_seed, w, h)
            write_page(root / split, f"{page_seed}", page.image, page.boxes, MAX_SIDE)
            n += len(page.boxes)
        boxes[split] = n
    heldout_yaml = write_yaml(
        root / "heldout.yaml", root / "heldout", root / "heldout", CLASS_NAMES
    )
    return Benchmark(root, root / "train", root / "heldout", heldout_yaml, boxes)

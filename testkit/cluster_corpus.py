"""Illustrations with known families, for the cluster job's tests and benchmark (bench/cluster.py).

A family is one motif (drawn by synthetic/) appearing several times, each appearance
re-drawn (a smooth elastic warp, thicker or thinner strokes), rotated up to +-20 degrees,
scaled 0.6-1.5x, sometimes mirrored, sometimes partly cropped, in another ink on other paper.
Distractors are motifs of the same kinds drawn once: they belong to no family (label -1).

Seeds below HELD_OUT_SEEDS are for developing the method; the benchmark reports those at or
above it separately (families the method was never tuned on). PIL + numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from synthetic.copies import render_illustration, transform
from synthetic.pages import _KINDS, _paper, _smooth_field

HELD_OUT_SEEDS = 1000
DISTRACTOR = -1


@dataclass(frozen=True)
class ClusterCorpus:
    images: list[Image.Image]
    labels: list[int]  # family number, or DISTRACTOR

    @property
    def families(self) -> int:
        return len({label for label in self.labels if label != DISTRACTOR})


def motif(seed: int, number: int) -> Image.Image:
    """Motif `number` of corpus `seed`: ink on white, its kind and size its own."""
    rng = np.random.default_rng([seed, number])
    width, height = int(rng.integers(220, 380)), int(rng.integers(200, 340))
    return render_illustration(seed * 100_003 + number, width, height, _KINDS[number % len(_KINDS)])


def _redraw(rng: np.random.Generator, art: Image.Image) -> Image.Image:
    """A hand's second drawing: strokes displaced by a smooth field (up to ~2% of the side),
    a little thicker or thinner."""
    w, h = art.size
    amp = max(w, h) * float(rng.uniform(0.005, 0.02))
    dx = (_smooth_field(rng, w, h, 4) - 0.5) * 2 * amp
    dy = (_smooth_field(rng, w, h, 4) - 0.5) * 2 * amp
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    src = np.asarray(art)
    xi = np.clip(np.rint(xs + dx), 0, w - 1).astype(np.intp)
    yi = np.clip(np.rint(ys + dy), 0, h - 1).astype(np.intp)
    out = Image.fromarray(src[yi, xi])
    stroke = rng.random()
    if stroke < 0.25:
        out = out.filter(ImageFilter.MinFilter(3))  # thicker ink
    elif stroke < 0.4:
        out = out.filter(ImageFilter.MaxFilter(3))  # thinner ink
    return out


def _crop_part(rng: np.random.Generator, art: Image.Image) -> Image.Image:
    """Part of the motif cut away (up to 15% from one side): a torn or trimmed copy."""
    w, h = art.size
    cut = float(rng.uniform(0.05, 0.15))
    side = int(rng.integers(4))
    box = [0, 0, w, h]
    if side == 0:
        box[0] = round(w * cut)
    elif side == 1:
        box[1] = round(h * cut)
    elif side == 2:
        box[2] = round(w * (1 - cut))
    else:
        box[3] = round(h * (1 - cut))
    return art.crop(tuple(box))


def _ink(rng: np.random.Generator) -> np.ndarray:
    """Another ink: black, brown, sepia, faded grey, dark blue or red."""
    inks = [(20, 18, 15), (70, 40, 20), (100, 70, 40), (90, 90, 90), (30, 35, 80), (120, 30, 25)]
    base = np.array(inks[int(rng.integers(len(inks)))], np.float32)
    return np.clip(base + rng.uniform(-12, 12, 3), 0, 255)


def on_paper(rng: np.random.Generator, art: Image.Image) -> Image.Image:
    """The drawing's darkness in a new ink, on new paper, with a margin and scanner grain."""
    margin = float(rng.uniform(0.03, 0.1))
    pad = round(max(art.size) * margin)
    w, h = art.width + 2 * pad, art.height + 2 * pad
    ink_layer = Image.new("RGB", (w, h), "white")
    ink_layer.paste(art, (pad, pad))
    darkness = 1.0 - np.asarray(ink_layer.convert("L"), np.float32)[..., None] / 255.0
    paper = np.asarray(_paper(rng, w, h, (0, 0, w, h)), np.float32)
    out = paper * (1 - darkness) + _ink(rng) * darkness
    out += rng.normal(0, float(rng.uniform(1, 5)), out.shape[:2])[..., None]
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    return image


def appearance(rng: np.random.Generator, art: Image.Image) -> Image.Image:
    """One appearance of a motif in a book: every change the benchmark asks of a family."""
    art = _redraw(rng, art)
    if rng.random() < 0.25:
        art = art.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        art = _crop_part(rng, art)
    art = transform(art, float(rng.uniform(0.6, 1.5)), float(rng.uniform(-20, 20)))
    # Rotation filled the corners white; a multiply keeps them paper-coloured later.
    art = ImageChops.multiply(art, Image.new("RGB", art.size, "white"))
    return on_paper(rng, art)


def build(
    seed: int, families: int = 60, members: tuple[int, int] = (4, 10), distractors: int = 100
) -> ClusterCorpus:
    """`families` motifs with `members` appearances each (inclusive range) and `distractors`
    single motifs, shuffled. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    entries: list[tuple[int, int]] = []  # (motif number, label)
    for family in range(families):
        count = int(rng.integers(members[0], members[1] + 1))
        entries += [(family, family)] * count
    entries += [(families + d, DISTRACTOR) for d in range(distractors)]
    order = rng.permutation(len(entries))
    arts: dict[int, Image.Image] = {}
    images, labels = [], []
    for position in order:
        number, label = entries[position]
        art = arts.get(number) or arts.setdefault(number, motif(seed, number))
        images.append(appearance(rng, art))
        labels.append(label)
    return ClusterCorpus(images, labels)

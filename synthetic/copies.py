"""Pages that share illustrations: the test bed of the similarity job.

`render_illustration` draws one illustration (ink on white, as `render_page` draws them), and
`page_with_illustrations` lays given illustrations out on a fresh page — its own paper, stains,
grain, text and blur — each at its own scale and slight rotation. Rendering one illustration
onto two pages gives a known copy: the same drawing, re-rendered at another scale, rotated a
little, on another background with other noise. PIL + numpy only, like pages.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from synthetic.pages import (
    _KIND_P,
    _KINDS,
    _RENDERERS,
    Box,
    RenderedPage,
    _ink_color,
    _paper,
    _text_column,
    _TextStyle,
    _tight_bbox,
    _u,
)


@dataclass(frozen=True)
class Placement:
    """How one illustration appears on a page: scale of its pixels and rotation (degrees)."""

    art: Image.Image
    scale: float = 1.0
    angle: float = 0.0


def render_illustration(
    seed: int, width: int = 360, height: int = 300, kind: str | None = None
) -> Image.Image:
    """One illustration (RGB ink on white), cropped to its visible extent. Deterministic."""
    rng = np.random.default_rng(seed)
    kind = kind or str(rng.choice(_KINDS, p=_KIND_P))
    art = _RENDERERS[kind](rng, width, height, 1.0, _ink_color(rng))
    box = _tight_bbox(art)
    return art.crop(box) if box else art


def transform(art: Image.Image, scale: float, angle: float) -> Image.Image:
    """Resample the drawing at another scale and rotate it; white (no ink) fills the corners."""
    if scale != 1.0:
        size = (max(8, round(art.width * scale)), max(8, round(art.height * scale)))
        art = art.resize(size, Image.Resampling.LANCZOS)
    if angle:
        art = art.rotate(
            angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)
        )
    return art


def _place(
    rng: np.random.Generator, sizes: list[tuple[int, int]], area: tuple[float, ...], gap: float
) -> list[tuple[int, int]]:
    """Non-overlapping top-left corners for the given sizes inside the area (rejection)."""
    x0, y0, x1, y1 = area
    taken: list[tuple[float, float, float, float]] = []
    corners = []
    for w, h in sizes:
        for _ in range(2000):
            x = x0 + rng.random() * max(1.0, x1 - x0 - w)
            y = y0 + rng.random() * max(1.0, y1 - y0 - h)
            rect = (x - gap, y - gap, x + w + gap, y + h + gap)
            if all(
                r[2] <= t[0] or r[0] >= t[2] or r[3] <= t[1] or r[1] >= t[3]
                for r in [rect]
                for t in taken
            ):
                break
        else:
            raise ValueError("illustrations do not fit on this page")
        taken.append(rect)
        corners.append((int(x), int(y)))
    return corners


def page_with_illustrations(
    seed: int, placements: list[Placement], width: int = 1000, height: int = 1400
) -> RenderedPage:
    """A page (paper, text flowing around the pictures, grain, sometimes blur or greyscale)
    showing the given illustrations; boxes are their visible extent on the page."""
    rng = np.random.default_rng(seed)
    arts = [transform(p.art, p.scale, p.angle) for p in placements]
    tx0, tx1 = width * _u(rng, 0.07, 0.12), width * (1 - _u(rng, 0.07, 0.12))
    ty0, ty1 = height * _u(rng, 0.06, 0.1), height * (1 - _u(rng, 0.07, 0.11))
    fit = min([1.0, *(min((tx1 - tx0) / a.width, (ty1 - ty0) / a.height) for a in arts)])
    if fit < 1.0:  # never let a picture overflow the text block
        arts = [transform(a, fit * 0.98, 0.0) for a in arts]
    ink = _ink_color(rng)
    pitch = height * _u(rng, 0.016, 0.028)
    style = _TextStyle(pitch, max(6, int(pitch / _u(rng, 1.2, 1.5))), ink, rng.random() < 0.15)
    corners = _place(rng, [a.size for a in arts], (tx0, ty0, tx1, ty1), pitch)

    layer = Image.new("RGB", (width, height), "white")
    boxes: list[Box] = []
    blocked = []
    for art, (x, y) in zip(arts, corners, strict=True):
        # Multiply, not paste: a rotated picture's white corners must not hide its neighbours.
        region = layer.crop((x, y, x + art.width, y + art.height))
        layer.paste(ImageChops.multiply(region, art), (x, y))
        bb = _tight_bbox(art) or (0, 0, art.width, art.height)
        boxes.append((x + bb[0], y + bb[1], bb[2] - bb[0], bb[3] - bb[1]))
        gap = pitch * 0.6
        blocked.append((x - gap, y - gap, x + art.width + gap, y + art.height + gap))
    draw = ImageDraw.Draw(layer)
    n_cols = 1 if rng.random() < 0.6 else 2
    gutter = (tx1 - tx0) * 0.04 if n_cols == 2 else 0.0
    colw = (tx1 - tx0 - gutter * (n_cols - 1)) / n_cols
    for i in range(n_cols):
        c0 = tx0 + i * (colw + gutter)
        _text_column(draw, rng, c0, c0 + colw, ty0, ty1, style, blocked)

    img = ImageChops.multiply(_paper(rng, width, height, (0, 0, width, height)), layer)
    noise = rng.normal(0.0, _u(rng, 2.0, 6.0), size=(height, width, 1)).astype(np.float32)
    arr = np.asarray(img, dtype=np.float32) + noise
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=_u(rng, 0.3, 0.9)))
    return RenderedPage(image=img, boxes=boxes)


def copy_of(
    art: Image.Image, seed: int, width: int = 1000, height: int = 1400, others: int = 0
) -> RenderedPage:
    """A new page re-rendering `art` at a random scale (0.6-1.5x) and rotation (up to 6
    degrees), with `others` distinct illustrations beside it (boxes[0] is the copy)."""
    rng = np.random.default_rng(seed)
    copy = Placement(art, scale=_u(rng, 0.6, 1.5), angle=_u(rng, -6.0, 6.0))
    extra = [
        Placement(render_illustration(seed * 7 + k, *_size(rng)), _u(rng, 0.8, 1.2))
        for k in range(others)
    ]
    return page_with_illustrations(seed, [copy, *extra], width, height)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = _u(rng, 220, 420)
    aspect = math.exp(_u(rng, math.log(0.6), math.log(1.6)))
    return (
        (round(long_side), round(long_side / aspect))
        if aspect >= 1
        else (round(long_side * aspect), round(long_side))
    )

"""Domain-shift pages: a printing style the shipped detector never saw in training.

The shipped model (model/weights/MODEL_CARD.md) was trained on synthetic/pages.py: cream
or grey paper, framed drawings, engravings drawn as dark hatching on white, plates. These pages
differ on purpose, in the ways the issue names:
- coloured paper: mostly dark (indigo, green, oxblood, brown) printed and drawn in light ink
  (white heightening, gold), the rest dyed in light colours (blue, green, rose, ochre);
- woodcut figures: solid black silhouettes carved by white gouge lines, no frame;
- two columns of text, figures set in a column or across both;
- small pen drawings in the outer margins (often red-brown), beside the text block.

Pure PIL + numpy, deterministic per seed; reuses the text and noise helpers of pages.py.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from synthetic.pages import (
    Box,
    RenderedPage,
    _bezier,
    _grain,
    _ink_color,
    _smooth_field,
    _text_column,
    _TextStyle,
    _tight_bbox,
    _u,
)

# Dyed papers: far from the cream/grey tints of the shipped model's training pages.
_PAPERS = ((150, 185, 225), (165, 210, 165), (235, 170, 185), (225, 185, 95), (190, 170, 220))
_MARGIN_INKS = ((150, 45, 30), (120, 60, 35), (40, 40, 110))
# Most pages are on dark blue, green, oxblood or brown paper printed and drawn in light ink
# (white heightening, gold): the contrast the shipped model learned is reversed there.
_DARK_PAPERS = ((40, 55, 110), (35, 70, 50), (95, 30, 35), (50, 42, 35))
_LIGHT_INKS = ((235, 230, 215), (230, 200, 120), (215, 225, 235))
DARK_SHARE = 0.75


def _silhouette(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A figure-like mask: a body of overlapping ellipses and limbs, filling most of the box."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.12, 0.35) * w, rng.uniform(0.12, 0.35) * h
        d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    for _ in range(int(rng.integers(2, 6))):  # limbs, branches: thick strokes to the edges
        pts = rng.random((4, 2)) * (w - 1, h - 1)
        d.line(_bezier(pts, 24), fill=255, width=max(2, int(min(w, h) * rng.uniform(0.04, 0.1))))
    # Ground line and anchor strokes so the figure reaches its box on every side.
    d.rectangle((0, int(h * 0.9), w - 1, h - 1), fill=255)
    d.line([(0, h * 0.5), (w * 0.3, h * 0.4)], fill=255, width=max(2, h // 30))
    d.line([(w - 1, h * 0.6), (w * 0.7, h * 0.5)], fill=255, width=max(2, h // 30))
    d.line([(w * 0.5, 0), (w * 0.45, h * 0.3)], fill=255, width=max(2, w // 30))
    return np.asarray(img) > 127


def woodcut(rng: np.random.Generator, w: int, h: int, s: float) -> Image.Image:
    """Black silhouette carved by white gouges (parallel cuts whose width follows a tone)."""
    mask = _silhouette(rng, w, h)
    tone = _smooth_field(rng, w, h, int(rng.integers(2, 6)))
    period = max(3.0, _u(rng, 4.0, 9.0) * s)
    angle = _u(rng, 0, math.pi)
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    wobble = np.sin(yy / (period * _u(rng, 4, 12))) * period * 0.6  # hand-cut, not ruled
    phase = ((xx * math.cos(angle) + yy * math.sin(angle) + wobble) / period) % 1.0
    cut = phase < tone * 0.55  # white cuts: wider where the tone is lighter
    black = mask & ~cut
    # Thick black contour around the silhouette: erode the mask and keep the rim.
    rim_px = max(2, int(_u(rng, 1.5, 3.5) * s))
    m_img = Image.fromarray((mask * 255).astype(np.uint8))
    inner = np.asarray(m_img.filter(ImageFilter.MinFilter(2 * rim_px + 1))) > 127
    black |= mask & ~inner
    arr = np.where(black[..., None], np.uint8(15), np.uint8(255))
    return Image.fromarray(np.repeat(arr, 3, axis=2))


def margin_drawing(rng: np.random.Generator, w: int, h: int, s: float, ink: tuple) -> Image.Image:
    """A marginal pen sketch: a few loose strokes and a small flower, hand, or creature."""
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    lw = max(1, round(_u(rng, 1.0, 2.2) * s))
    d.line([(w * 0.02, h * 0.98), (w * 0.5, h * 0.7), (w * 0.98, h * 0.02)], fill=ink, width=lw)
    for _ in range(int(rng.integers(5, 14))):
        pts = rng.random((4, 2)) * (w - 1, h - 1)
        d.line(_bezier(pts, 30), fill=ink, width=lw, joint="curve")
    c, r = rng.uniform(0.3, 0.7, 2) * (w, h), min(w, h) * _u(rng, 0.1, 0.25)
    for k in range(int(rng.integers(4, 8))):  # petals
        a = 2 * math.pi * k / 6
        px, py = c[0] + r * math.cos(a), c[1] + r * math.sin(a)
        d.ellipse((px - r / 2, py - r / 2, px + r / 2, py + r / 2), outline=ink, width=lw)
    return img


def _paper(rng: np.random.Generator, w: int, h: int, dark: bool) -> Image.Image:
    papers = _DARK_PAPERS if dark else _PAPERS
    tint = np.array(papers[int(rng.integers(len(papers)))], dtype=np.float32)
    tint += rng.integers(-15, 16, size=3)
    sw, sh = max(8, w // 4), max(8, h // 4)
    lum = 1.0 + (_smooth_field(rng, sw, sh, int(rng.integers(3, 9))) - 0.5) * _u(rng, 0.05, 0.15)
    small = Image.fromarray(np.clip(lum[..., None] * tint, 0, 255).astype(np.uint8))
    arr = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    arr += _grain(rng, w, h, _u(rng, 2.0, 6.0))[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _overlaps(a: tuple[float, ...], placed: list[tuple[float, ...]]) -> bool:
    return any(not (a[2] <= b[0] or a[0] >= b[2] or a[3] <= b[1] or a[1] >= b[3]) for b in placed)


def render_woodcut_page(seed: int, width: int = 1000, height: int = 1400) -> RenderedPage:
    """A two-column page on dyed paper with 1-2 woodcuts and 0-2 marginal drawings."""
    rng = np.random.default_rng([seed, 23])  # a stream apart from pages.py's for the same seed
    s = min(width, height) / 1000.0
    ink = _ink_color(rng)
    pitch = height * _u(rng, 0.016, 0.026)
    style = _TextStyle(pitch, max(6, int(pitch / _u(rng, 1.2, 1.5))), ink, False)
    tx0, tx1 = width * _u(rng, 0.17, 0.22), width * _u(rng, 0.78, 0.83)
    ty0, ty1 = height * _u(rng, 0.07, 0.1), height * _u(rng, 0.88, 0.93)
    gutter = (tx1 - tx0) * 0.05
    colw = (tx1 - tx0 - gutter) / 2
    cols = [(tx0, tx0 + colw), (tx1 - colw, tx1)]

    layer = Image.new("RGB", (width, height), "white")
    placed: list[tuple[float, ...]] = []
    boxes: list[Box] = []

    def put(art: Image.Image, x: int, y: int) -> None:
        bb = _tight_bbox(art)
        if bb is None:
            return
        layer.paste(art, (x, y))
        boxes.append((x + bb[0], y + bb[1], bb[2] - bb[0], bb[3] - bb[1]))

    for _ in range(int(rng.integers(1, 3))):  # woodcuts in the text block
        for _try in range(40):
            across = rng.random() < 0.35
            w = int((tx1 - tx0 if across else colw) * _u(rng, 0.6, 1.0))
            h = int(min(w * _u(rng, 0.6, 1.3), (ty1 - ty0) * 0.45))
            c0 = tx0 if across else cols[int(rng.integers(2))][0]
            x = int(c0 + ((tx1 - tx0 if across else colw) - w) * rng.random())
            y = int(ty0 + (ty1 - ty0 - h) * rng.random())
            gap = pitch * 0.8
            rect = (x - gap, y - gap, x + w + gap, y + h + gap)
            if not _overlaps(rect, placed):
                placed.append(rect)
                put(woodcut(rng, w, h, s), x, y)
                break
    margin_ink = _MARGIN_INKS[int(rng.integers(len(_MARGIN_INKS)))]
    margins = [(width * 0.02, tx0 - width * 0.02), (tx1 + width * 0.02, width * 0.98)]
    for _ in range(int(rng.integers(0, 3))):  # marginal drawings beside the text block
        m0, m1 = margins[int(rng.integers(2))]
        w = int((m1 - m0) * _u(rng, 0.6, 1.0))
        h = int(w * _u(rng, 0.8, 1.8))
        x = int(m0 + (m1 - m0 - w) * rng.random())
        y = int(ty0 + (ty1 - ty0 - h) * rng.random())
        rect = (x, y, x + w, y + h)
        if not _overlaps(rect, placed):
            placed.append(rect)
            put(margin_drawing(rng, w, h, s, margin_ink), x, y)

    d = ImageDraw.Draw(layer)
    text_blocked = [r for r in placed if r[0] < tx1 and r[2] > tx0]
    for c0, c1 in cols:
        _text_column(d, rng, c0, c1, ty0, ty1, style, text_blocked)
    dark = rng.random() < DARK_SHARE
    paper = _paper(rng, width, height, dark)
    if dark:  # light ink laid on dark paper: the layer's darkness says how much ink
        ink_amount = 1.0 - np.asarray(layer, dtype=np.float32).mean(axis=2, keepdims=True) / 255
        light = np.array(_LIGHT_INKS[int(rng.integers(len(_LIGHT_INKS)))], dtype=np.float32)
        arr = np.asarray(paper, dtype=np.float32) * (1 - ink_amount) + light * ink_amount
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    else:
        img = ImageChops.multiply(paper, layer)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=_u(rng, 0.3, 0.9) * s))
    return RenderedPage(image=img, boxes=boxes)

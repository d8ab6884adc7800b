"""Synthetic "digitized book page" renderer with ground-truth illustration boxes.

Pure PIL + numpy (no torch / ultralytics) so tests, benchmarks and dataset generation can all
use it cheaply. Every size is relative to the page, so a 1000x1400 render and a 3000x4000 render
look alike once downscaled to a detector's input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

Box = tuple[int, int, int, int]  # x, y, w, h
Rect = tuple[float, float, float, float]  # x0, y0, x1, y1
Color = tuple[int, int, int]

# Rough English letter frequencies so font-rendered "text" has a realistic texture.
_LETTERS = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
_FREQ = np.array(
    [
        12.7,
        9.1,
        8.2,
        7.5,
        7.0,
        6.7,
        6.3,
        6.1,
        6.0,
        4.3,
        4.0,
        2.8,
        2.8,
        2.4,
        2.4,
        2.2,
        2.0,
        2.0,
        1.9,
        1.5,
        1.0,
        0.8,
        0.15,
        0.15,
        0.1,
        0.07,
    ]
)
_LETTER_P = _FREQ / _FREQ.sum()
_CAPITALS = "ABCDEFGHIKLMNOPRSTVW"

# Illustration kinds and how often each is drawn.
_KINDS = ("line", "diagram", "ornament", "engraving", "plate")
_KIND_P = (0.2, 0.18, 0.17, 0.25, 0.2)

# Muted pigments typical of printed plates and hand-coloured diagrams.
_PALETTE: tuple[Color, ...] = (
    (150, 40, 35),
    (170, 70, 40),
    (60, 80, 130),
    (40, 90, 70),
    (180, 140, 60),
    (110, 70, 40),
    (90, 110, 60),
    (130, 60, 90),
    (200, 170, 110),
    (70, 60, 50),
)


@dataclass
class RenderedPage:
    """A rendered page (RGB) and its illustration boxes as (x, y, w, h) pixels."""

    image: Image.Image
    boxes: list[Box] = field(default_factory=list)


@lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont | None:
    """Pillow's bundled scalable font; None when FreeType is missing (fall back to blobs)."""
    font = ImageFont.load_default(size=max(6, size))
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


@lru_cache(maxsize=256)
def _char_width(size: int) -> float:
    font = _font(size)
    sample = "etaoin shrdlu cmfwyp"
    return font.getlength(sample) / len(sample) if font else size * 0.5


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jitter(rng: np.random.Generator, color: Color, amount: int = 20) -> Color:
    c = np.clip(np.array(color) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _ink_color(rng: np.random.Generator) -> Color:
    """Printing ink: near-black, brown-black or faded grey."""
    base = _u(rng, 10, 70)
    return int(base + _u(rng, 0, 20)), int(base + _u(rng, 0, 12)), int(base)


def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] of shape (h, w): a small random grid upsampled bicubically."""
    gw = max(2, cells)
    gh = max(2, round(cells * h / max(w, 1)))
    small = Image.fromarray(rng.random((gh, gw)).astype(np.float32))
    arr = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo + 1e-6)


def _grain(rng: np.random.Generator, w: int, h: int, sigma: float) -> np.ndarray:
    """Fine noise by tiling a small random patch: visually random, far cheaper than full-size."""
    patch = rng.normal(0.0, sigma, size=(131, 127)).astype(np.float32)
    reps = (h // patch.shape[0] + 1, w // patch.shape[1] + 1)
    return np.tile(patch, reps)[:h, :w]


def _bezier(pts: np.ndarray, n: int = 40) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = pts
    c = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    return [(float(x), float(y)) for x, y in c]


def _tight_bbox(img: Image.Image) -> tuple[int, int, int, int] | None:
    """Box (x0, y0, x1, y1) of visible ink on a white canvas."""
    m = np.asarray(img).min(axis=2) < 232
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _frame(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, s: float, ink: Color
) -> int:
    """Thin single or double frame on the canvas edge; returns the inset used by the content."""
    lw = max(1, round(_u(rng, 1, 3) * s))
    d.rectangle((0, 0, w - 1, h - 1), outline=ink, width=lw)
    inset = lw
    if rng.random() < 0.4:
        g = max(2, round(_u(rng, 3, 7) * s))
        d.rectangle(
            (g + lw, g + lw, w - 1 - g - lw, h - 1 - g - lw), outline=ink, width=max(1, lw // 2)
        )
        inset = g + 2 * lw
    return inset + max(2, round(_u(rng, 2, 10) * s))


# --------------------------------------------------------------------------- illustrations


def _line_drawing(rng: np.random.Generator, w: int, h: int, s: float, ink: Color) -> Image.Image:
    """Pen drawing: curves, polygons, ellipses and branching 'trees'."""
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pad = _frame(d, rng, w, h, s, ink) if rng.random() < 0.35 else 0
    lo = np.array([pad, pad], dtype=float)
    span = np.array([w - 2 * pad - 1, h - 2 * pad - 1], dtype=float)
    # Anchor the drawing to the canvas corners so the visible extent matches the box.
    for cx, cy in ((0.02, 0.02), (0.98, 0.98)):
        p = lo + span * np.array([cx, cy])
        q = p + (rng.random(2) - 0.5) * span * 0.2
        d.line([tuple(p), tuple(np.clip(q, lo, lo + span))], fill=ink, width=max(1, round(s)))
    for _ in range(int(rng.integers(6, 30))):
        lw = max(1, round(_u(rng, 0.8, 3.0) * s))
        kind = rng.random()
        if kind < 0.45:
            pts = lo + rng.random((4, 2)) * span
            d.line(_bezier(pts), fill=ink, width=lw, joint="curve")
        elif kind < 0.6:
            c = lo + rng.random(2) * span
            r = rng.random(2) * span * 0.25 + 2
            d.ellipse((c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]), outline=ink, width=lw)
        elif kind < 0.75:
            pts = lo + rng.random((int(rng.integers(3, 7)), 2)) * span
            d.polygon([tuple(p) for p in pts], outline=ink, width=lw)
        else:
            base = lo + span * np.array([rng.random(), _u(rng, 0.7, 1.0)])
            _tree(
                d,
                rng,
                base,
                -math.pi / 2,
                span[1] * _u(rng, 0.15, 0.35),
                int(rng.integers(3, 6)),
                lw,
                ink,
                lo,
                lo + span,
            )
    return img


def _tree(
    d: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    p: np.ndarray,
    angle: float,
    length: float,
    depth: int,
    lw: int,
    ink: Color,
    lo: np.ndarray,
    hi: np.ndarray,
) -> None:
    q = np.clip(p + length * np.array([math.cos(angle), math.sin(angle)]), lo, hi)
    d.line([tuple(p), tuple(q)], fill=ink, width=max(1, lw))
    if depth <= 0:
        return
    for da in (-_u(rng, 0.2, 0.7), _u(rng, 0.2, 0.7)):
        _tree(
            d,
            rng,
            q,
            angle + da,
            length * _u(rng, 0.55, 0.8),
            depth - 1,
            max(1, lw - 1),
            ink,
            lo,
            hi,
        )


def _diagram(rng: np.random.Generator, w: int, h: int, s: float, ink: Color) -> Image.Image:
    """Filled diagrams: geometry, bar charts, node/arrow networks, grids."""
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pad = _frame(d, rng, w, h, s, ink) if rng.random() < 0.6 else 0
    x0, y0, x1, y1 = pad, pad, w - 1 - pad, h - 1 - pad
    cw, ch = x1 - x0, y1 - y0
    lw = max(1, round(_u(rng, 1, 2.5) * s))
    colored = rng.random() < 0.6

    def fill() -> Color:
        if colored:
            return _jitter(rng, _PALETTE[int(rng.integers(len(_PALETTE)))])
        g = int(rng.integers(60, 210))
        return g, g, g

    style = rng.random()
    if style < 0.3:  # bar chart / plot with axes
        d.line([(x0, y0), (x0, y1), (x1, y1)], fill=ink, width=lw + 1)
        n = int(rng.integers(3, 12))
        bw = cw / (n * 1.5)
        for i in range(n):
            bh = ch * _u(rng, 0.1, 0.95)
            bx = x0 + bw * (0.5 + 1.5 * i)
            d.rectangle((bx, y1 - bh, bx + bw, y1), fill=fill(), outline=ink)
        for i in range(1, 6):  # tick marks
            ty = y1 - ch * i / 6
            d.line([(x0 - 4 * s, ty), (x0, ty)], fill=ink, width=lw)
    elif style < 0.55:  # nodes joined by arrows
        n = int(rng.integers(3, 9))
        r = min(cw, ch) * _u(rng, 0.06, 0.14)
        centers = np.column_stack([rng.uniform(x0 + r, x1 - r, n), rng.uniform(y0 + r, y1 - r, n)])
        for i in range(n - 1):
            _arrow(d, centers[i], centers[int(rng.integers(i + 1, n))], r, lw, ink, s)
        for c in centers:
            box = (c[0] - r, c[1] - r, c[0] + r, c[1] + r)
            if rng.random() < 0.5:
                d.ellipse(box, fill=fill(), outline=ink, width=lw)
            else:
                d.rectangle(box, fill=fill(), outline=ink, width=lw)
        d.rectangle((x0, y0, x1, y1), outline=ink, width=lw)
    elif style < 0.8:  # geometry: circles, polygons, chords, labels
        for _ in range(int(rng.integers(2, 6))):
            c = rng.uniform((x0, y0), (x1, y1))
            r = min(cw, ch) * _u(rng, 0.1, 0.45)
            box = (max(x0, c[0] - r), max(y0, c[1] - r), min(x1, c[0] + r), min(y1, c[1] + r))
            if box[2] - box[0] > 2 and box[3] - box[1] > 2:
                d.ellipse(box, outline=ink, width=lw, fill=fill() if rng.random() < 0.5 else None)
        for _ in range(int(rng.integers(2, 8))):
            a, b = rng.uniform((x0, y0), (x1, y1), size=(2, 2))
            d.line([tuple(a), tuple(b)], fill=ink, width=lw)
        pts = rng.uniform((x0, y0), (x1, y1), size=(3, 2))
        d.polygon([tuple(p) for p in pts], outline=ink, width=lw)
        d.line([(x0, y0), (x1, y0)], fill=ink, width=lw)
        d.line([(x0, y1), (x1, y1)], fill=ink, width=lw)
        font = _font(int(min(cw, ch) * _u(rng, 0.05, 0.1)) + 6)
        if font is not None:
            for p in pts:
                d.text(tuple(p), _CAPITALS[int(rng.integers(len(_CAPITALS)))], fill=ink, font=font)
    else:  # grid / map with filled cells
        nx, ny = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        for i in range(nx):
            for j in range(ny):
                if rng.random() < 0.35:
                    cx0, cy0 = x0 + cw * i / nx, y0 + ch * j / ny
                    d.rectangle((cx0, cy0, cx0 + cw / nx, cy0 + ch / ny), fill=fill())
        for i in range(nx + 1):
            d.line([(x0 + cw * i / nx, y0), (x0 + cw * i / nx, y1)], fill=ink, width=lw)
        for j in range(ny + 1):
            d.line([(x0, y0 + ch * j / ny), (x1, y0 + ch * j / ny)], fill=ink, width=lw)
    return img


def _arrow(
    d: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, r: float, lw: int, ink: Color, s: float
) -> None:
    v = b - a
    n = float(np.hypot(*v))
    if n < 2 * r + 1:
        return
    u = v / n
    tip = b - u * r
    d.line([tuple(a + u * r), tuple(tip)], fill=ink, width=lw)
    head = max(4.0, 8 * s)
    perp = np.array([-u[1], u[0]])
    d.polygon(
        [
            tuple(tip),
            tuple(tip - u * head + perp * head / 2),
            tuple(tip - u * head - perp * head / 2),
        ],
        fill=ink,
    )


def _ornament(rng: np.random.Generator, w: int, h: int, s: float, ink: Color) -> Image.Image:
    """Decorated initial letter (square-ish) or a head-piece band of repeated motifs."""
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    accent = _jitter(rng, _PALETTE[int(rng.integers(len(_PALETTE)))]) if rng.random() < 0.5 else ink
    lw = max(1, round(_u(rng, 1, 3) * s))
    if rng.random() < 0.5:
        bg = _jitter(rng, _PALETTE[int(rng.integers(len(_PALETTE)))], 30)
        d.rectangle((0, 0, w - 1, h - 1), fill=bg)
    d.rectangle((0, 0, w - 1, h - 1), outline=ink, width=lw)
    g = max(2, round(min(w, h) * _u(rng, 0.04, 0.1)))
    if rng.random() < 0.6:
        d.rectangle((g, g, w - 1 - g, h - 1 - g), outline=accent, width=max(1, lw // 2 + 1))
    if w > 2.2 * h:  # head-piece band: a motif repeated along the width
        n = max(2, int(w / h))
        cell = w / n
        motif = rng.random((4, 2))
        for i in range(n):
            for fx in (1, -1):  # mirrored halves give the symmetric look of printers' flowers
                pts = np.column_stack(
                    [
                        i * cell + cell / 2 + fx * (motif[:, 0] - 0.5) * cell * 0.8,
                        g + motif[:, 1] * (h - 2 * g),
                    ]
                )
                d.line(_bezier(pts, 20), fill=accent, width=lw)
            r = min(cell, h) * 0.12
            cx, cy = i * cell + cell / 2, h / 2
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
        return img
    # Initial: 4-fold mirrored vines around a big capital.
    cx, cy = w / 2, h / 2
    for _ in range(int(rng.integers(2, 6))):
        pts = rng.random((4, 2)) * np.array([w / 2 - g, h / 2 - g])
        for sx in (1, -1):
            for sy in (1, -1):
                p = np.column_stack([cx + sx * pts[:, 0], cy + sy * pts[:, 1]])
                d.line(_bezier(p, 24), fill=accent, width=lw)
    font = _font(int(h * _u(rng, 0.55, 0.8)))
    letter = _CAPITALS[int(rng.integers(len(_CAPITALS)))]
    if font is not None:
        d.text(
            (cx, cy),
            letter,
            fill=ink,
            font=font,
            anchor="mm",
            stroke_width=max(0, round(s)),
            stroke_fill=ink,
        )
    else:
        d.rectangle((cx - w * 0.2, cy - h * 0.3, cx + w * 0.2, cy + h * 0.3), fill=ink)
    return img


def _engraving(rng: np.random.Generator, w: int, h: int, s: float, ink: Color) -> Image.Image:
    """Shaded engraving: a tone field rendered as (cross-)hatching, in a frame or a vignette."""
    # Tone is built at 1/4 resolution (shapes + blur are the slow part) and upsampled.
    sw, sh = max(4, w // 4), max(4, h // 4)
    tone_img = Image.fromarray(
        (_smooth_field(rng, sw, sh, int(rng.integers(2, 7))) * 140).astype(np.uint8)
    )
    td = ImageDraw.Draw(tone_img)
    for _ in range(int(rng.integers(2, 9))):
        c = rng.random(2) * (sw, sh)
        r = rng.random(2) * (sw, sh) * 0.3 + 1
        v = int(rng.integers(0, 256))
        if rng.random() < 0.6:
            td.ellipse((c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]), fill=v)
        else:
            pts = rng.random((int(rng.integers(3, 7)), 2)) * (sw, sh)
            td.polygon([tuple(p) for p in pts], fill=v)
    tone_img = tone_img.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(sw, sh) * 0.02)))
    tone = np.asarray(tone_img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    if rng.random() < 0.5:  # landscape: light sky, dark ground
        tone = 0.6 * tone + 0.4 * np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    tone = np.clip(tone * _u(rng, 0.8, 1.3), 0.0, 1.0)

    period = max(2.2, _u(rng, 2.5, 6.0) * s)
    a1 = _u(rng, 0, math.pi)
    a2 = a1 + _u(rng, 0.9, 2.2)
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    ph1 = ((xx * math.cos(a1) + yy * math.sin(a1)) / period) % 1.0
    ph2 = ((xx * math.cos(a2) + yy * math.sin(a2)) / period) % 1.0
    mask = (ph1 < tone * 0.8) | (ph2 < (tone - 0.55) * 1.5)

    if rng.random() < 0.45:  # irregular vignette instead of a rectangle
        rx = (np.linspace(-1, 1, w, dtype=np.float32)[None, :]) ** 2
        ry = (np.linspace(-1, 1, h, dtype=np.float32)[:, None]) ** 2
        edge = _smooth_field(rng, w, h, int(rng.integers(3, 8))) * 0.45
        mask &= (rx + ry) < (0.65 + edge)
    arr = np.where(mask[..., None], np.array(ink, dtype=np.uint8), np.uint8(255))
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    lw = max(1, round(_u(rng, 1, 2.5) * s))
    for _ in range(int(rng.integers(1, 6))):  # contour lines drawn over the shading
        pts = rng.random((4, 2)) * (w - 1, h - 1)
        d.line(_bezier(pts), fill=ink, width=lw, joint="curve")
    if rng.random() < 0.6:
        _frame(d, rng, w, h, s, ink)
    return img


def _plate(rng: np.random.Generator, w: int, h: int, s: float, ink: Color) -> Image.Image:
    """Painted / photographic plate: smooth colour field with soft shapes, grain and a border."""
    sw, sh = max(4, w // 3), max(4, h // 3)
    grid = int(rng.integers(2, 7))
    gh = max(2, round(grid * sh / sw))
    cols = np.array([_PALETTE[i] for i in rng.integers(len(_PALETTE), size=grid * gh)], float)
    cols += rng.normal(0, 25, cols.shape)
    small = Image.fromarray(np.clip(cols, 0, 255).astype(np.uint8).reshape(gh, grid, 3))
    base = small.resize((sw, sh), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(2, 12))):
        c = rng.random(2) * (sw, sh)
        r = rng.random(2) * (sw, sh) * 0.25 + 1
        col = _jitter(rng, _PALETTE[int(rng.integers(len(_PALETTE)))], 40)
        if rng.random() < 0.5:
            d.ellipse((c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]), fill=col)
        else:
            pts = rng.random((int(rng.integers(3, 7)), 2)) * (sw, sh)
            d.polygon([tuple(p) for p in pts], fill=col)
    base = base.filter(ImageFilter.GaussianBlur(radius=_u(rng, 0.5, 3.0)))
    arr = np.asarray(base.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    if rng.random() < 0.45:  # monochrome / sepia photograph
        g = arr.mean(axis=2, keepdims=True)
        arr = g * np.array([1.0, _u(rng, 0.85, 1.0), _u(rng, 0.6, 1.0)], dtype=np.float32)
    arr = arr * _u(rng, 0.6, 1.0) + _grain(rng, w, h, _u(rng, 2, 10))[..., None]
    img = Image.fromarray(np.clip(arr, 0, 235).astype(np.uint8))
    if rng.random() < 0.6:
        d = ImageDraw.Draw(img)
        d.rectangle((0, 0, w - 1, h - 1), outline=ink, width=max(1, round(_u(rng, 1, 4) * s)))
    return img


_RENDERERS = {
    "line": _line_drawing,
    "diagram": _diagram,
    "ornament": _ornament,
    "engraving": _engraving,
    "plate": _plate,
}


# --------------------------------------------------------------------------- page layout


def _paper(rng: np.random.Generator, w: int, h: int, rect: Rect) -> Image.Image:
    """Paper inside rect (scanner bed outside): tint, mottling, light gradient, stains, grain.

    Everything but the grain is low-frequency, so it is computed at 1/4 resolution and
    upsampled: this keeps 3000x4000 pages fast.
    """
    if rng.random() < 0.7:  # cream / yellowed
        r = _u(rng, 225, 250)
        tint = np.array([r, r - _u(rng, 3, 14), r - _u(rng, 12, 45)], dtype=np.float32)
    else:  # white-ish / grey
        r = _u(rng, 215, 250)
        tint = np.array([r, r - _u(rng, 0, 4), r - _u(rng, 0, 8)], dtype=np.float32)
    sw, sh = max(8, w // 4), max(8, h // 4)
    lum = 1.0 + (_smooth_field(rng, sw, sh, int(rng.integers(4, 12))) - 0.5) * _u(rng, 0, 0.08)
    ang = _u(rng, 0, 2 * math.pi)
    xs = np.linspace(-0.5, 0.5, sw, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, sh, dtype=np.float32)[:, None]
    ramp = xs * math.cos(ang) + ys * math.sin(ang)
    lum = lum - ramp * _u(rng, 0.0, 0.12)
    if rng.random() < 0.3:  # shadow of the book's spine near one side
        dist = xs + 0.5 if rng.random() < 0.5 else 0.5 - xs
        lum = lum * (1.0 - _u(rng, 0.1, 0.45) * np.exp(-dist / _u(rng, 0.02, 0.08)))
    paper = lum[..., None] * tint

    if rng.random() < 0.5:  # foxing spots and water stains
        stain = Image.new("L", (sw, sh), 0)
        sd = ImageDraw.Draw(stain)
        for _ in range(int(rng.integers(0, 40))):
            c = rng.random(2) * (sw, sh)
            r = _u(rng, 0.5, 3.0) * sw / 250
            sd.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=int(rng.integers(60, 200)))
        for _ in range(int(rng.integers(0, 3))):
            c = rng.random(2) * (sw, sh)
            r = _u(rng, 0.05, 0.3) * sw
            sd.ellipse(
                (c[0] - r, c[1] - r, c[0] + r, c[1] + r),
                fill=int(rng.integers(20, 70)),
                outline=int(rng.integers(60, 120)),
                width=max(1, int(r * 0.05)),
            )
        stain = stain.filter(ImageFilter.GaussianBlur(radius=max(0.6, sw / 300)))
        st = np.asarray(stain, dtype=np.float32) / 255
        brown = np.array([0.25, 0.45, 0.75], dtype=np.float32)  # blue fades most: brownish stain
        paper *= 1.0 - st[..., None] * brown
    small = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    img = small.resize((w, h), Image.Resampling.BILINEAR)

    x0, y0, x1, y1 = (int(v) for v in rect)
    if (x0, y0, x1, y1) != (0, 0, w, h):  # dark scanner bed around the sheet
        dark = int(rng.integers(5, 60))
        bed = Image.new("RGB", (w, h), (dark, dark, dark))
        bed.paste(img.crop((x0, y0, x1, y1)), (x0, y0))
        img = bed

    # Grain: a small random patch tiled (looks random, costs far less than full-size noise),
    # added around 128 with ImageChops so no full-size float arrays are needed.
    sigma = _u(rng, 1.0, 5.0)
    patch = np.clip(128 + rng.normal(0.0, sigma, size=(131, 127, 1)), 0, 255).astype(np.uint8)
    grain = np.tile(np.repeat(patch, 3, axis=2), (h // 131 + 1, w // 127 + 1, 1))[:h, :w]
    return ImageChops.add(img, Image.fromarray(np.ascontiguousarray(grain)), 1.0, -128)


def _random_words(rng: np.random.Generator, n: int) -> list[str]:
    lengths = rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 11], size=n)
    letters = rng.choice(_LETTERS, size=int(lengths.sum()), p=_LETTER_P)
    words, i = [], 0
    for k in lengths:
        word = "".join(letters[i : i + k])
        i += k
        if rng.random() < 0.12:
            word = word.capitalize()
        if rng.random() < 0.08:
            word += "," if rng.random() < 0.6 else "."
        words.append(word)
    return words


@dataclass
class _TextStyle:
    pitch: float  # line pitch (baseline to baseline)
    size: int  # font size in px
    ink: Color
    blobs: bool  # draw word blobs instead of glyphs (blurry old scans)


def _draw_segment(
    d: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    x0: float,
    x1: float,
    base: float,
    st: _TextStyle,
    fill_ratio: float = 1.0,
) -> None:
    """One run of words on a baseline between x0 and x1."""
    width = (x1 - x0) * fill_ratio
    cw = _char_width(st.size)
    if width < 3 * cw:
        return
    words = _random_words(rng, int(width / (cw * 4)) + 4)
    if st.blobs:
        xh = st.size * 0.5
        x = x0
        for word in words:
            ww = len(word) * cw
            if x + ww > x0 + width:
                break
            d.rectangle((x, base - xh, x + ww, base), fill=st.ink)
            if rng.random() < 0.5:  # an ascender somewhere in the word
                ax = x + rng.random() * max(1.0, ww - cw * 0.3)
                d.rectangle((ax, base - xh * 1.6, ax + cw * 0.3, base), fill=st.ink)
            x += ww + cw * 1.1
        return
    font = _font(st.size)
    line = " ".join(words)
    n = int(width / cw)
    line = line[:n].rsplit(" ", 1)[0] if len(line) > n else line
    while line and font is not None and font.getlength(line) > width:
        line = line.rsplit(" ", 1)[0] if " " in line else ""
    if line and font is not None:
        d.text((x0, base), line, fill=st.ink, font=font, anchor="ls")


def _free_segments(
    x0: float, x1: float, y0: float, y1: float, blocked: list[Rect]
) -> list[tuple[float, float]]:
    """Parts of [x0, x1] not covered by blocked rectangles overlapping rows [y0, y1]."""
    segs = [(x0, x1)]
    for bx0, by0, bx1, by1 in blocked:
        if by1 <= y0 or by0 >= y1:
            continue
        nxt = []
        for a, b in segs:
            if bx1 <= a or bx0 >= b:
                nxt.append((a, b))
                continue
            if bx0 > a:
                nxt.append((a, bx0))
            if bx1 < b:
                nxt.append((bx1, b))
        segs = nxt
    return segs


def _text_column(
    d: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    st: _TextStyle,
    blocked: list[Rect],
) -> None:
    """Paragraphs of lines flowing around the blocked (illustration) rectangles."""
    y = y0
    left_in_par = int(rng.integers(2, 14))
    first = True
    while y + st.pitch <= y1:
        base = y + st.pitch * 0.78
        if rng.random() < 0.03:  # a heading: bigger, centred, short
            hs = _TextStyle(st.pitch * 1.6, int(st.size * _u(rng, 1.3, 1.8)), st.ink, st.blobs)
            free = _free_segments(x0, x1, y, y + hs.pitch * 1.3, blocked)
            if y + hs.pitch * 1.3 <= y1 and free == [(x0, x1)]:
                c, half = (x0 + x1) / 2, (x1 - x0) * _u(rng, 0.15, 0.35)
                _draw_segment(d, rng, c - half, c + half, y + hs.pitch * 0.8, hs)
                y += hs.pitch * 1.3
                continue
        segs = _free_segments(x0, x1, y, y + st.pitch, blocked)
        for i, (a, b) in enumerate(segs):
            indent = st.size * 1.5 if first and i == 0 else 0.0
            ratio = _u(rng, 0.2, 0.9) if left_in_par == 1 and i == len(segs) - 1 else 1.0
            _draw_segment(d, rng, a + indent, b, base, st, ratio)
        first = False
        left_in_par -= 1
        if left_in_par <= 0:
            left_in_par = int(rng.integers(2, 14))
            first = True
            if rng.random() < 0.2:
                y += st.pitch * 0.6  # paragraph spacing
        y += st.pitch


@dataclass
class _Placed:
    kind: str
    x: int
    y: int
    w: int
    h: int
    blocked: Rect
    caption: bool


def _sample_size(
    rng: np.random.Generator, kind: str, tw: float, th: float, side: float, shrink: float
) -> tuple[int, int]:
    if kind == "ornament":
        if rng.random() < 0.35:  # head-piece band
            w = tw * _u(rng, 0.3, 0.85) * shrink
            h = max(side * 0.035, w / _u(rng, 2.6, 6.0))
        else:  # initial letter
            w = side * _u(rng, 0.06, 0.15) * max(shrink, 0.6)
            h = w * _u(rng, 0.85, 1.2)
    else:
        long_side = side * math.exp(_u(rng, math.log(0.08), math.log(0.7))) * shrink
        aspect = math.exp(_u(rng, math.log(0.45), math.log(2.3)))  # w / h
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    w = min(max(w, side * 0.04), tw)
    h = min(max(h, side * 0.04), th)
    return int(w), int(h)


def _place(
    rng: np.random.Generator,
    n: int,
    area: Rect,
    cols: list[tuple[float, float]],
    side: float,
    pitch: float,
) -> list[_Placed]:
    """Rejection-sample n non-overlapping illustrations (with text/caption gaps) in the area."""
    ax0, ay0, ax1, ay1 = area
    tw, th = ax1 - ax0, ay1 - ay0
    placed: list[_Placed] = []
    shrink, tries = 1.0, 0
    while len(placed) < n:
        tries += 1
        if tries % 30 == 0:
            shrink *= 0.75  # crowded page: make later candidates smaller
        if tries > 1500:
            raise ValueError(f"cannot fit {n} illustrations on this page")
        kind = str(rng.choice(_KINDS, p=_KIND_P))
        w, h = _sample_size(rng, kind, tw, th, side, shrink)
        caption = kind != "ornament" and rng.random() < 0.45
        cap_h = pitch * 1.6 if caption else 0.0
        if h + cap_h > th:
            caption, cap_h = False, 0.0
        cw_ = cols[0][1] - cols[0][0]
        if len(cols) > 1 and w <= cw_ and rng.random() < 0.75:  # sit inside one column
            c0, c1 = cols[int(rng.integers(len(cols)))]
            x = c0 + (c1 - c0 - w) * float(rng.choice([0.0, 0.5, 1.0, rng.random()]))
        elif rng.random() < 0.5:
            x = ax0 + (tw - w) / 2
        else:
            x = ax0 + rng.random() * (tw - w)
        y = ay0 + rng.random() * (th - h - cap_h)
        gap = pitch * _u(rng, 0.4, 1.2)
        blocked = (x - gap, y - gap, x + w + gap, y + h + cap_h + gap)
        if any(
            not (
                blocked[2] <= p.blocked[0]
                or blocked[0] >= p.blocked[2]
                or blocked[3] <= p.blocked[1]
                or blocked[1] >= p.blocked[3]
            )
            for p in placed
        ):
            continue
        placed.append(_Placed(kind, int(x), int(y), w, h, blocked, caption))
    return placed


def render_page(
    seed: int, width: int = 1000, height: int = 1400, n_illustrations: int | None = None
) -> RenderedPage:
    """Render a deterministic synthetic page; boxes are the visible extent of each illustration."""
    rng = np.random.default_rng(seed)
    s = min(width, height) / 1000.0  # scale factor: layouts are designed for a 1000 px wide page
    n = int(rng.integers(0, 4)) if n_illustrations is None else int(n_illustrations)

    # Dark scanner bed around the paper on some sides.
    border = [0, 0, 0, 0]  # left, top, right, bottom
    if rng.random() < 0.3:
        for i, dim in enumerate((width, height, width, height)):
            if rng.random() < 0.6:
                border[i] = int(dim * _u(rng, 0.005, 0.05))
    px0, py0, px1, py1 = border[0], border[1], width - border[2], height - border[3]
    pw, ph = px1 - px0, py1 - py0
    side = math.sqrt(pw * ph)

    ink = _ink_color(rng)
    pitch = ph * _u(rng, 0.014, 0.032)
    style = _TextStyle(pitch, max(6, int(pitch / _u(rng, 1.15, 1.6))), ink, rng.random() < 0.2)
    tx0 = px0 + pw * _u(rng, 0.06, 0.15)
    tx1 = px1 - pw * _u(rng, 0.06, 0.15)
    ty0 = py0 + ph * _u(rng, 0.05, 0.12)
    ty1 = py1 - ph * _u(rng, 0.06, 0.13)
    n_cols = int(rng.choice([1, 2, 3], p=[0.55, 0.35, 0.1]))
    gutter = (tx1 - tx0) * _u(rng, 0.03, 0.06) if n_cols > 1 else 0.0
    colw = (tx1 - tx0 - gutter * (n_cols - 1)) / n_cols
    cols = [(tx0 + i * (colw + gutter), tx0 + i * (colw + gutter) + colw) for i in range(n_cols)]

    layer = Image.new("RGB", (width, height), "white")  # ink layer, multiplied onto the paper
    d = ImageDraw.Draw(layer)
    placed = _place(rng, n, (tx0, ty0, tx1, ty1), cols, side, pitch)
    boxes: list[Box] = []
    for p in placed:
        art = _RENDERERS[p.kind](rng, p.w, p.h, s, _ink_color(rng) if rng.random() < 0.3 else ink)
        bb = _tight_bbox(art)
        if bb is None:  # never expected, but keep the label honest: draw a frame
            ImageDraw.Draw(art).rectangle((0, 0, p.w - 1, p.h - 1), outline=ink, width=2)
            bb = (0, 0, p.w, p.h)
        layer.paste(art, (p.x, p.y))
        boxes.append((p.x + bb[0], p.y + bb[1], bb[2] - bb[0], bb[3] - bb[1]))
        if p.caption:  # captions are text: centred under the picture, inside its blocked area
            cs = _TextStyle(pitch, max(6, int(style.size * 0.85)), ink, style.blobs)
            c, half = p.x + p.w / 2, min(p.w, colw) * _u(rng, 0.2, 0.45)
            _draw_segment(d, rng, c - half, c + half, p.y + p.h + pitch * 1.1, cs)

    blocked = [p.blocked for p in placed]
    end = ty1 if rng.random() < 0.85 else ty0 + (ty1 - ty0) * _u(rng, 0.2, 0.8)  # chapter end
    for c0, c1 in cols:
        _text_column(d, rng, c0, c1, ty0, end, style, blocked)
    if rng.random() < 0.6:  # running head and page number
        hs = _TextStyle(pitch, max(6, int(style.size * 0.8)), ink, style.blobs)
        c = (tx0 + tx1) / 2
        _draw_segment(d, rng, c - pw * 0.12, c + pw * 0.12, ty0 - pitch * 1.2, hs)
        if rng.random() < 0.5:
            d.line(
                [(tx0, ty0 - pitch * 0.8), (tx1, ty0 - pitch * 0.8)],
                fill=ink,
                width=max(1, round(s)),
            )
        font = _font(hs.size)
        if font is not None:
            d.text(
                (c, py1 - ph * 0.04),
                str(int(rng.integers(1, 400))),
                fill=ink,
                font=font,
                anchor="ms",
            )

    # Ink multiplies the paper, so paper texture and stains show through printed areas.
    img = ImageChops.multiply(_paper(rng, width, height, (px0, py0, px1, py1)), layer)
    if rng.random() < 0.15:  # grey-scale scan
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.25:  # slightly soft scan
        img = img.filter(ImageFilter.GaussianBlur(radius=_u(rng, 0.3, 1.0) * s))
    return RenderedPage(image=img, boxes=boxes)

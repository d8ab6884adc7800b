"""Synthetic astronomical/geometric diagrams with ground-truth primitives: the benchmark of the
vectorize job (bench/vectorize.py) and its tests.

What makes real diagrams hard is drawn in on purpose (Kalleli et al., ICDAR 2024, train only on
such renders): ink of varying width on aged, stained paper; hand-drawn wobble and gaps; circles
crossed by diameters and radii, concentric circles and arcs; small letters beside the figures;
blur, grain and JPEG compression; 600-2000 px. Seeded: `render_diagram(seed)` is always the same.

Ground truth is in the image's pixels, angles as the job gives them: degrees in [0, 360) of
atan2(y - cy, x - cx) (y down), an arc running from `start_deg` to `end_deg` by increasing angle.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

Primitive = dict  # {"kind": "line"|"circle"|"arc", ...} as the job emits them
LETTERS = "ABCDEFGHIKLMNOPQRSTVXZabcdefghilmnopqrstuvx"
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
)


@dataclass
class RenderedDiagram:
    image: Image.Image
    jpeg: bytes  # the image as the benchmark sends it
    primitives: list[Primitive] = field(default_factory=list)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    small = rng.standard_normal((cells, max(2, round(cells * w / h)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _paper(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    red = rng.uniform(205, 245)
    base = np.array([red, red * rng.uniform(0.88, 0.96), red * rng.uniform(0.7, 0.85)])
    shade = 1 + 0.05 * _smooth_noise(rng, w, h, 4) + 0.02 * _smooth_noise(rng, w, h, 16)
    img = base[None, None, :] * shade[..., None]
    sw, sh = max(8, w // 8), max(8, h // 8)  # stains drawn small, then enlarged (soft anyway)
    stains = np.zeros((sh, sw), np.float32)
    for _ in range(rng.integers(0, 6)):  # soft brown blotches
        mask = np.zeros((sh, sw), np.float32)
        center = (int(rng.uniform(0, sw)), int(rng.uniform(0, sh)))
        axes = (int(rng.uniform(0.03, 0.2) * sw) + 1, int(rng.uniform(0.03, 0.2) * sh) + 1)
        cv2.ellipse(mask, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        stains += rng.uniform(0.08, 0.3) * cv2.GaussianBlur(mask, (0, 0), max(axes) * 0.3 + 1)
    stains = cv2.resize(stains, (w, h), interpolation=cv2.INTER_LINEAR)
    img *= 1 - np.clip(stains, 0, 0.5)[..., None] * np.array([0.7, 0.85, 1.0])
    return img


def _wobbly(points: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Hand-drawn wobble: a smooth offset across the stroke (low frequency along it)."""
    n = len(points)
    knots = max(2, n // 25)
    offsets = np.interp(np.arange(n), np.linspace(0, n - 1, knots), rng.normal(0, amount, knots))
    d = np.gradient(points, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    return points + normal * offsets[:, None]


def _stroke(
    canvas: np.ndarray, points: np.ndarray, rng: np.random.Generator, width: float, gaps: bool
) -> None:
    """Ink along a polyline: width varying along it, a few gaps where the pen skipped."""
    n = len(points)
    widths = width * (1 + 0.35 * np.interp(np.arange(n), [0, n - 1], rng.uniform(-1, 1, 2)))
    skip = np.zeros(n, bool)
    if gaps:
        for _ in range(rng.integers(0, 4)):
            start = rng.integers(0, n)
            skip[start : start + rng.integers(1, max(2, n // 40))] = True
    for i in range(n - 1):
        if skip[i]:
            continue
        a, b = points[i], points[i + 1]
        cv2.line(
            canvas,
            (round(a[0] * 8), round(a[1] * 8)),
            (round(b[0] * 8), round(b[1] * 8)),
            255,
            max(1, round(widths[i])),
            cv2.LINE_AA,
            3,
        )


def _arc_points(cx: float, cy: float, r: float, a0: float, a1: float) -> np.ndarray:
    """Points from a0 to a1 degrees (increasing), about one per 2 px."""
    span = (a1 - a0) % 360 or 360
    n = max(8, int(2 * math.pi * r * span / 360 / 2))
    t = np.radians(a0 + np.linspace(0, span, n))
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _line_points(p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    n = max(4, int(math.dist(p0, p1) / 2))
    return np.linspace(p0, p1, n)


def _layout(rng: np.random.Generator, w: int, h: int) -> list[Primitive]:
    """A diagram: one or two centres with concentric circles and arcs, diameters and radii
    through them, chords and free lines; all inside the page."""
    s = min(w, h)
    shapes: list[Primitive] = []
    for _ in range(rng.integers(1, 3)):
        r_max = rng.uniform(0.18, 0.42) * s
        cx, cy = (
            rng.uniform(r_max + 0.04 * s, w - r_max - 0.04 * s),
            rng.uniform(r_max + 0.04 * s, h - r_max - 0.04 * s),
        )
        radii = sorted(
            {round(r_max * f, 1) for f in rng.uniform(0.25, 1.0, rng.integers(1, 4))}, reverse=True
        )
        radii = [r for i, r in enumerate(radii) if i == 0 or radii[i - 1] - r > 0.06 * s]
        for r in radii:
            if rng.random() < 0.7:
                shapes.append({"kind": "circle", "center": [cx, cy], "radius": r})
            else:
                a0 = rng.uniform(0, 360)
                shapes.append(_arc(cx, cy, r, a0, a0 + rng.uniform(40, 270)))
        if rng.random() < 0.7:  # arcs of other circles centred on this one (epicycles)
            for _ in range(rng.integers(1, 3)):
                t = rng.uniform(0, 2 * math.pi)
                rr = rng.uniform(0.15, 0.45) * r_max
                ax, ay = cx + r_max * 0.6 * math.cos(t), cy + r_max * 0.6 * math.sin(t)
                a0 = rng.uniform(0, 360)
                shapes.append(_arc(ax, ay, rr, a0, a0 + rng.uniform(60, 250)))
        for _ in range(rng.integers(1, 4)):  # diameters and radii
            t = rng.uniform(0, math.pi)
            if rng.random() < 0.6:
                p0 = (cx - r_max * math.cos(t), cy - r_max * math.sin(t))
            else:
                p0 = (cx, cy)
            p1 = (cx + r_max * math.cos(t), cy + r_max * math.sin(t))
            shapes.append(_line(p0, p1))
    for _ in range(rng.integers(0, 4)):  # free lines and chords
        p0 = (rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h)
        t, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.6) * s
        p1 = (p0[0] + length * math.cos(t), p0[1] + length * math.sin(t))
        p1 = (min(max(p1[0], 0.03 * w), 0.97 * w), min(max(p1[1], 0.03 * h), 0.97 * h))
        if math.dist(p0, p1) > 0.1 * s:
            shapes.append(_line(p0, p1))
    return shapes


def _arc(cx: float, cy: float, r: float, a0: float, a1: float) -> Primitive:
    return {
        "kind": "arc",
        "center": [cx, cy],
        "radius": r,
        "start_deg": a0 % 360,
        "end_deg": a1 % 360,
    }


def _line(p0: tuple[float, float], p1: tuple[float, float]) -> Primitive:
    return {"kind": "line", "p0": list(p0), "p1": list(p1)}


def _labels(ink: np.ndarray, rng: np.random.Generator, w: int, h: int) -> None:
    s = min(w, h)
    for _ in range(rng.integers(3, 14)):
        text = "".join(rng.choice(list(LETTERS), rng.integers(1, 4)))
        scale = rng.uniform(0.012, 0.03) * s / 22
        org = (round(rng.uniform(0.02, 0.9) * w), round(rng.uniform(0.05, 0.98) * h))
        thickness = max(1, round(scale * rng.uniform(1.5, 2.5)))
        font = int(rng.choice(FONTS))
        cv2.putText(ink, text, org, font, scale, 255, thickness, cv2.LINE_AA)


def render_diagram(seed: int, long_side: int | None = None) -> RenderedDiagram:
    """One diagram: its image, its JPEG bytes and its primitives."""
    rng = np.random.default_rng(seed)
    side = long_side or int(rng.uniform(600, 2000))
    aspect = rng.uniform(0.7, 1.0)
    w, h = (side, round(side * aspect)) if rng.random() < 0.5 else (round(side * aspect), side)
    shapes = _layout(rng, w, h)
    ink = np.zeros((h, w), np.uint8)
    base_width = rng.uniform(1.2, 4.0) * side / 1000
    wobble = rng.uniform(0.2, 1.2) * side / 1000
    for shape in shapes:
        if shape["kind"] == "line":
            points = _line_points(shape["p0"], shape["p1"])
        elif shape["kind"] == "circle":
            (cx, cy), r = shape["center"], shape["radius"]
            points = _arc_points(cx, cy, r, 0, 360)
        else:
            (cx, cy), r = shape["center"], shape["radius"]
            points = _arc_points(cx, cy, r, shape["start_deg"], shape["end_deg"])
        width = base_width * rng.uniform(0.6, 1.5)
        _stroke(ink, _wobbly(points, rng, wobble), rng, width, gaps=rng.random() < 0.6)
    _labels(ink, rng, w, h)
    paper = _paper(rng, w, h)
    color = np.array([rng.uniform(20, 70), rng.uniform(15, 50), rng.uniform(10, 40)])
    alpha = np.clip(
        ink / 255.0 * rng.uniform(0.75, 1.0) * (1 + 0.1 * _smooth_noise(rng, w, h, 8)), 0, 1
    )
    img = paper * (1 - alpha[..., None]) + color * alpha[..., None]
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.normal(0, rng.uniform(2, 7), img.shape)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=int(rng.integers(35, 90)))
    jpeg = buffer.getvalue()
    rounded = [_rounded(p) for p in shapes]
    return RenderedDiagram(Image.open(io.BytesIO(jpeg)), jpeg, rounded)


def _rounded(shape: Primitive) -> Primitive:
    out: Primitive = {}
    for key, value in shape.items():
        if isinstance(value, list):
            out[key] = [round(float(v), 2) for v in value]
        elif isinstance(value, float):
            out[key] = round(value, 2)
        else:
            out[key] = value
    return out

"""The vectorize job's primitives as drawings: SVG files (one per item, sized to its image, to
open in Inkscape or over the page in a browser) and the SVG path data of IIIF `SvgSelector`s.

Mirador draws only `<path>` elements of an SvgSelector (ProjectMirador/mirador#3875), so the
selectors use path data alone: a line `M L`, a circle two half-circle arcs, an arc `M A`. The
files use `<line>`, `<circle>` and `<path>` (arcs), which every SVG reader knows. Arcs run by
increasing angle in image coordinates (y down), which is SVG's sweep-flag 1.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any
from xml.sax.saxutils import quoteattr

SVG_NS = "http://www.w3.org/2000/svg"
COLORS = {"line": "#d62728", "circle": "#1f77b4", "arc": "#2ca02c"}


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _on_circle(cx: float, cy: float, r: float, deg: float) -> tuple[float, float]:
    t = math.radians(deg)
    return cx + r * math.cos(t), cy + r * math.sin(t)


def path_data(p: dict[str, Any]) -> str:
    """SVG path data of one primitive."""
    if p["kind"] == "line":
        (x0, y0), (x1, y1) = p["p0"], p["p1"]
        return f"M{_n(x0)},{_n(y0)} L{_n(x1)},{_n(y1)}"
    (cx, cy), r = p["center"], p["radius"]
    if p["kind"] == "circle":
        return (
            f"M{_n(cx - r)},{_n(cy)} A{_n(r)},{_n(r)} 0 1 1 {_n(cx + r)},{_n(cy)} "
            f"A{_n(r)},{_n(r)} 0 1 1 {_n(cx - r)},{_n(cy)}"
        )
    span = (p["end_deg"] - p["start_deg"]) % 360
    (x0, y0), (x1, y1) = (_on_circle(cx, cy, r, p[k]) for k in ("start_deg", "end_deg"))
    large = 1 if span > 180 else 0
    return f"M{_n(x0)},{_n(y0)} A{_n(r)},{_n(r)} 0 {large} 1 {_n(x1)},{_n(y1)}"


def bbox(p: dict[str, Any]) -> list[int]:
    """x, y, w, h around a primitive (an arc: around its whole circle's part it spans)."""
    if p["kind"] == "line":
        xs, ys = [p["p0"][0], p["p1"][0]], [p["p0"][1], p["p1"][1]]
    else:
        (cx, cy), r = p["center"], p["radius"]
        if p["kind"] == "circle":
            xs, ys = [cx - r, cx + r], [cy - r, cy + r]
        else:
            span = (p["end_deg"] - p["start_deg"]) % 360
            angles = [p["start_deg"] + span * i / 32 for i in range(33)]
            pts = [_on_circle(cx, cy, r, a) for a in angles]
            xs, ys = [x for x, _ in pts], [y for _, y in pts]
    x0, y0 = math.floor(max(0.0, min(xs))), math.floor(max(0.0, min(ys)))
    return [x0, y0, max(1, math.ceil(max(xs)) - x0), max(1, math.ceil(max(ys)) - y0)]


def selector_svg(p: dict[str, Any], stroke: int = 3) -> str:
    """An SvgSelector's value: one <path> in canvas coordinates, no size on the <svg>."""
    style = f"fill:none;stroke:{COLORS[p['kind']]};stroke-width:{stroke}"
    return f"<svg xmlns='{SVG_NS}'><path d='{path_data(p)}' style='{style}'/></svg>"


def _element(p: dict[str, Any], stroke: float) -> str:
    attrs = f'fill="none" stroke="{COLORS[p["kind"]]}" stroke-width="{_n(stroke)}"'
    title = f"<title>{p['kind']} {p.get('confidence', 1.0):.2f}</title>"
    if p["kind"] == "line":
        (x0, y0), (x1, y1) = p["p0"], p["p1"]
        shape = f'<line x1="{_n(x0)}" y1="{_n(y0)}" x2="{_n(x1)}" y2="{_n(y1)}" {attrs}>'
        return f"{shape}{title}</line>"
    if p["kind"] == "circle":
        (cx, cy), r = p["center"], p["radius"]
        return f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="{_n(r)}" {attrs}>{title}</circle>'
    return f'<path d="{path_data(p)}" {attrs}>{title}</path>'


def item_size(item: dict[str, Any]) -> tuple[float, float]:
    """The size of the space the item's coordinates are in (canvas, or image)."""
    width = item.get("canvas_width") or item.get("width") or 1
    height = item.get("canvas_height") or item.get("height") or 1
    return float(width), float(height)


def svg_document(item: dict[str, Any]) -> str:
    """One item's primitives as an SVG file sized to its image (or canvas)."""
    width, height = item_size(item)
    stroke = max(1.0, max(width, height) / 400)
    body = "\n".join(_element(p, stroke) for p in item.get("primitives", []))
    source = quoteattr(str(item.get("source", "")))
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="{SVG_NS}" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}">\n'
        f"<desc>{source[1:-1]}</desc>\n{body}\n</svg>\n"
    )


def svg_archive(items: list[dict[str, Any]]) -> bytes:
    """A zip with one SVG per finished item, named by its index in the task."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(items, key=lambda i: i["index"]):
            if item.get("status") == "ok":
                archive.writestr(f"{item['index']:05d}.svg", svg_document(item))
    return buffer.getvalue()

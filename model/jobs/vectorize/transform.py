"""Primitives moved between coordinate spaces (analysed image -> decoded image -> page or
canvas), rounded for the result. An axis-aligned scale and shift is all the job needs: a radius
takes the mean of the two scales, angles stay (the two scales differ only by rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Affine:
    sx: float
    sy: float
    tx: float = 0.0
    ty: float = 0.0

    @classmethod
    def scale(cls, k: float) -> Affine:
        return cls(k, k)

    def point(self, p: list[float]) -> list[float]:
        return [round(p[0] * self.sx + self.tx, 2), round(p[1] * self.sy + self.ty, 2)]


def transformed(primitives: list[dict[str, Any]], t: Affine) -> list[dict[str, Any]]:
    out = []
    for p in primitives:
        q: dict[str, Any] = {"kind": p["kind"]}
        if p["kind"] == "line":
            q["p0"], q["p1"] = t.point(p["p0"]), t.point(p["p1"])
        else:
            q["center"] = t.point(p["center"])
            q["radius"] = round(float(p["radius"]) * (t.sx + t.sy) / 2, 2)
            if p["kind"] == "arc":
                q["start_deg"] = round(float(p["start_deg"]) % 360, 2) % 360
                q["end_deg"] = round(float(p["end_deg"]) % 360, 2) % 360
        q["confidence"] = round(float(p.get("confidence", 1.0)), 3)
        out.append(q)
    return out


def page_transform(prepared: Any) -> Affine:
    """Decoded-image pixels -> the item's coordinates: the canvas for IIIF canvases (the image
    may be painted on part of it), else the decoded image (as detect's to_output_box)."""
    unit = prepared.unit
    width, height = prepared.decoded_size
    if unit.canvas is None or not (width and height):
        return Affine(1.0, 1.0)
    canvas = unit.canvas.canvas
    region = canvas.image.region if canvas.image else None
    if region is None:
        region = (0, 0, canvas.width or width, canvas.height or height)
    rx, ry, rw, rh = region
    return Affine(rw / width, rh / height, rx, ry)

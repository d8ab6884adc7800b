"""Lenient accessors for IIIF JSON-LD as found in the wild (2.x `@id`/`@type`, 3.0 `id`/`type`).

Real manifests mix versions, omit optional keys, put one object where a list is expected and use
language maps or plain strings for labels; these helpers absorb that so parsers stay readable.
"""

from __future__ import annotations

import math
import re
from typing import Any

_FRAGMENT = re.compile(
    r"xywh=(?:pixel:)?(\d+(?:\.\d+)?),(\d+(?:\.\d+)?),(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)"
)


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def node_id(node: Any) -> str | None:
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        value = node.get("id") or node.get("@id")
        return value if isinstance(value, str) else None
    return None


def node_type(node: Any) -> str:
    """Type without its prefix, lower-cased: `sc:Manifest` and `Manifest` both give `manifest`."""
    if not isinstance(node, dict):
        return ""
    for raw in as_list(node.get("type") or node.get("@type")):
        if isinstance(raw, str):
            return raw.rsplit(":", 1)[-1].lower()
    return ""


def contexts(node: dict[str, Any]) -> list[str]:
    return [c for c in as_list(node.get("@context")) if isinstance(c, str)]


# Labels nest two or three levels deep; deeper is hostile, and must not recurse without bound.
_LABEL_DEPTH = 8


def label_text(label: Any, depth: int = 0) -> str:
    """A display string from a 3.0 language map, a 2.x string / @value list, or nothing."""
    if isinstance(label, str):
        return label
    if depth >= _LABEL_DEPTH:
        return ""
    if isinstance(label, dict):
        if "@value" in label:
            return scalar_text(label["@value"])
        for values in label.values():
            texts = [scalar_text(v) for v in as_list(values) if v is not None]
            if any(texts):
                return " ".join(t for t in texts if t)
        return ""
    if isinstance(label, list):
        for entry in label:
            text = label_text(entry, depth + 1)
            if text:
                return text
    return ""


def scalar_text(value: Any) -> str:
    """A string or number as text; anything else is "" (str() of a deeply nested list recurses,
    and its text is no label anyway)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**18):
        return str(value)
    return ""


# No real canvas or image is a million pixels a side; a bigger number is broken or hostile, and
# bounding it keeps later arithmetic (scales, areas, boxes) finite.
MAX_SIDE_PX = 1_000_000


class InvalidNumber(ValueError):
    """A number the document gives that is unusable: not a number, not finite, out of range."""


def _number(value: Any) -> float | int:
    """`value` as a finite number; raises InvalidNumber. Ints stay ints: float() of a 400-digit
    int overflows."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidNumber(f"{_shown(value)} is not a number")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except ValueError:
        raise InvalidNumber(f"{_shown(value)} is not a number") from None
    if not math.isfinite(number):
        raise InvalidNumber(f"{_shown(value)} is not a finite number")
    return number


def _shown(value: Any) -> str:
    """`value` for a message, kept short (and never repr() of a nested container)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"a number of {value.bit_length()} bits"  # str() of a huge int may refuse
    if not isinstance(value, (str, int, float)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def size_value(value: Any, name: str, limit: int = MAX_SIDE_PX) -> int | None:
    """A pixel size: None when absent (or 0, the placeholder some publishers write); raises
    InvalidNumber when present but negative, non-numeric, non-finite or above `limit`."""
    if value is None or value == "":
        return None
    try:
        number = _number(value)
    except InvalidNumber as exc:
        raise InvalidNumber(f"{name}: {exc}") from None
    if number < 0 or number > limit:
        raise InvalidNumber(f"{name}: {_shown(value)} is out of range (0 to {limit})")
    return int(number) or None


def positive_int(value: Any, limit: int = MAX_SIDE_PX) -> int | None:
    """Lenient, for optional hints: a usable size, else None."""
    try:
        return size_value(value, "value", limit)
    except InvalidNumber:
        return None


def xywh_fragment(value: str | None) -> tuple[int, int, int, int] | None:
    """The `xywh=` media fragment of a target (`canvas#xywh=0,0,10,10`), if any; raises
    InvalidNumber when a coordinate is beyond MAX_SIDE_PX."""
    if not value:
        return None
    match = _FRAGMENT.search(value)
    if not match:
        return None
    x, y, w, h = (_coordinate(v) for v in match.groups())
    return (x, y, w, h) if w > 0 and h > 0 else None


def _coordinate(text: str) -> int:
    # The regex admits only digits, so the one thing to refuse is size (400 digits read as inf).
    number = float(text)
    if number > MAX_SIDE_PX:
        raise InvalidNumber(f"xywh: {_shown(text)} is out of range (0 to {MAX_SIDE_PX})")
    return round(number)

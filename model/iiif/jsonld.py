"""Lenient accessors for IIIF JSON-LD as found in the wild (2.x `@id`/`@type`, 3.0 `id`/`type`).

Real manifests mix versions, omit optional keys, put one object where a list is expected and use
language maps or plain strings for labels; these helpers absorb that so parsers stay readable.
"""

from __future__ import annotations

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


def label_text(label: Any) -> str:
    """A display string from a 3.0 language map, a 2.x string / @value list, or nothing."""
    if isinstance(label, str):
        return label
    if isinstance(label, dict):
        if "@value" in label:
            return str(label["@value"])
        for values in label.values():
            texts = [str(v) for v in as_list(values) if v is not None]
            if texts:
                return " ".join(texts)
        return ""
    if isinstance(label, list):
        for entry in label:
            text = label_text(entry)
            if text:
                return text
    return ""


def positive_int(value: Any) -> int | None:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def xywh_fragment(value: str | None) -> tuple[int, int, int, int] | None:
    """The `xywh=` media fragment of a target (`canvas#xywh=0,0,10,10`), if any."""
    if not value:
        return None
    match = _FRAGMENT.search(value)
    if not match:
        return None
    x, y, w, h = (round(float(v)) for v in match.groups())
    return (x, y, w, h) if w > 0 and h > 0 else None

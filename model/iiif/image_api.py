"""IIIF Image API 2 and 3 services: read their description and ask for only the pixels we need.

Size choice by compliance level:
- level 1/2: any width (`w,`), capped by `maxWidth`/`maxHeight`/`maxArea`;
- level 0 (and services whose level is unknown): only the sizes the service lists, or the full
  image — the smallest listed size at least `max_side` long, else the largest one still at least
  `min_side` long (the detector's own input), else the full image;
- never more than the full image (no upscaling), never a service we cannot speak (Image API 1).

Which description the choice starts from (the manifest's embedded service or its info.json) is
decided in negotiate.py; `ImageRequest.method` records it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from model.iiif.jsonld import (
    MAX_SIDE_PX,
    as_list,
    contexts,
    node_id,
    node_type,
    positive_int,
    size_value,
)

_LEVEL = re.compile(r"level\s*([0-2])")


@dataclass(frozen=True)
class ImageService:
    id: str  # base URI, without a trailing slash
    version: int  # Image API major version: 2 or 3
    level: int  # compliance level 0-2; 0 when the service does not say
    width: int | None = None
    height: int | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    max_width: int | None = None
    max_height: int | None = None
    max_area: int | None = None
    described: bool = False  # read from info.json (not only the manifest's embedded stub)
    # The profile names a level: `level` is what the publisher declared, not a default of 0.
    level_declared: bool = False

    @property
    def info_url(self) -> str:
        return f"{self.id}/info.json"

    def merged(self, info: ImageService) -> ImageService:
        """This (embedded) description completed by the service's own info.json."""
        return replace(
            info,
            id=info.id or self.id,
            # An info.json naming no level does not undo the level the manifest declared.
            level=info.level if info.level_declared else self.level,
            level_declared=info.level_declared or self.level_declared,
            width=info.width or self.width,
            height=info.height or self.height,
            sizes=info.sizes or self.sizes,
            described=True,
        )


@dataclass(frozen=True)
class ImageRequest:
    url: str
    width: int | None  # expected size of the answer (the server may round by a pixel)
    height: int | None
    full_width: int | None
    full_height: int | None
    # The size asked: "scaled", "confined" (`!w,h`), "listed_size", "full" (via the service) or
    # "image" (the image resource, no service).
    choice: str
    # How it was planned: "computed" (from the manifest's declared level and size), "sizes" (a
    # size the manifest lists), "info.json" (from the service's description) or "image".
    method: str = "info.json"
    notes: list[str] = field(default_factory=list)
    # The image service asked (its base URI), None for the image resource itself: regions of
    # the page are asked from it (the crops job) without taking the URL apart.
    service_id: str | None = None


def _version(node: dict[str, Any]) -> int | None:
    kind = node_type(node)
    hints = " ".join(
        [*contexts(node), *(p for p in as_list(node.get("profile")) if isinstance(p, str))]
    )
    if kind == "imageservice3" or "image/3" in hints:
        return 3
    if kind == "imageservice2" or "image/2" in hints:
        return 2
    if kind == "imageservice1" or "image/1" in hints:
        return 1
    return None


def _level(node: dict[str, Any]) -> int | None:
    """The compliance level the profile names (2.x URI, 3.0 "levelN"), None when it names none."""
    for entry in as_list(node.get("profile")):
        if isinstance(entry, str) and (match := _LEVEL.search(entry)):
            return int(match.group(1))
    return None


def _limits(node: dict[str, Any]) -> dict[str, int | None]:
    # 3.0 puts maxWidth & co. on the service; 2.x inside the profile's description object.
    # Optional hints: an unusable one is ignored (no limit), it cannot make the service unusable.
    sources = [node, *(p for p in as_list(node.get("profile")) if isinstance(p, dict))]
    bounds = {"maxWidth": MAX_SIDE_PX, "maxHeight": MAX_SIDE_PX, "maxArea": MAX_SIDE_PX**2}
    found: dict[str, int | None] = dict.fromkeys(bounds)
    for source in sources:
        for key, bound in bounds.items():
            found[key] = found[key] or positive_int(source.get(key), bound)
    return found


def parse_service(value: Any, default_version: int = 2) -> ImageService | None:
    """The first Image API 2/3 service in a `service` value (object or list), if any.

    A service that names no version is taken as `default_version` (lenient: real manifests omit
    `@context`/`profile`); an Image API 1 service is not used. Raises InvalidNumber when its
    width or height is given but unusable (listed sizes out of range are only left out).
    """
    for node in as_list(value):
        if not isinstance(node, dict):
            continue
        service_id = node_id(node)
        kind = node_type(node)
        hints = " ".join(
            contexts(node) + [p for p in as_list(node.get("profile")) if isinstance(p, str)]
        )
        other_api = (kind and not kind.startswith("imageservice")) or "iiif.io/api/" in hints
        if not service_id or (_version(node) is None and other_api):
            continue  # e.g. an auth or search service
        version = _version(node) or default_version
        if version not in (2, 3):
            continue
        limits = _limits(node)
        sizes = tuple(
            (w, h)
            for size in as_list(node.get("sizes"))
            if isinstance(size, dict)
            and (w := positive_int(size.get("width")))
            and (h := positive_int(size.get("height")))
        )
        max_width = limits["maxWidth"]
        level = _level(node)
        return ImageService(
            id=service_id.rstrip("/"),
            version=version,
            level=level or 0,
            width=size_value(node.get("width"), "width"),
            height=size_value(node.get("height"), "height"),
            sizes=sizes,
            max_width=max_width,
            max_height=limits["maxHeight"] or max_width,  # maxHeight defaults to maxWidth
            max_area=limits["maxArea"],
            level_declared=level is not None,
        )
    return None


def parse_info(data: Any, fallback_id: str, default_version: int) -> ImageService | None:
    """An info.json document as a service description; raises InvalidNumber (a ValueError) for
    an unusable width or height."""
    if not isinstance(data, dict):
        return None
    if not node_id(data):
        data = {**data, "id": fallback_id}
    return parse_service(data, default_version)


def _full_url(service: ImageService) -> str:
    return f"{service.id}/full/{'max' if service.version == 3 else 'full'}/0/default.jpg"


def _size_url(service: ImageService, width: int, height: int, by_width: bool = False) -> str:
    # Canonical size forms: `w,` in 2.x, `w,h` in 3.0 (what level-0 servers store). `by_width`:
    # `w,` in both, for sizes worked out from the manifest, whose aspect ratio may be a pixel off
    # the image's (the server derives the height; sizeByW is level 1 in both versions).
    size = f"{width},{height}" if service.version == 3 and not by_width else f"{width},"
    return f"{service.id}/full/{size}/0/default.jpg"


def confined_request(service: ImageService, max_side: int, method: str) -> ImageRequest:
    """`!max_side,max_side` (level 2): the best fit without knowing the image's size."""
    url = f"{service.id}/full/!{max_side},{max_side}/0/default.jpg"
    return ImageRequest(url, None, None, None, None, "confined", method, service_id=service.id)


def choose_request(
    service: ImageService,
    max_side: int,
    min_side: int,
    method: str = "info.json",
) -> ImageRequest:
    """The request for the smallest image that still gives the detector `max_side` pixels
    (see _choose), naming the service it asks."""
    return replace(_choose(service, max_side, min_side, method), service_id=service.id)


def _choose(service: ImageService, max_side: int, min_side: int, method: str) -> ImageRequest:
    """The request for the smallest image that still gives the detector `max_side` pixels.

    `method` says where the description comes from; a "computed" one (the manifest's) asks
    scaled sizes as `w,` (see _size_url)."""
    width, height = service.width, service.height
    if not width or not height:
        return ImageRequest(
            _full_url(service),
            None,
            None,
            None,
            None,
            "full",
            method,
            ["service does not give the image size: full image requested"],
        )
    longest = max(width, height)
    full = ImageRequest(_full_url(service), width, height, width, height, "full", method)
    if service.level >= 1:
        scale = min(1.0, max_side / longest)
        if service.max_width:
            scale = min(scale, service.max_width / width)
        if service.max_height:
            scale = min(scale, service.max_height / height)
        if service.max_area:
            scale = min(scale, math.sqrt(service.max_area / (width * height)))
        if scale >= 1.0:
            return full
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        over = (
            (service.max_width and w > service.max_width)
            or (service.max_height and h > service.max_height)
            or (service.max_area and w * h > service.max_area)
        )
        if over:  # rounding up broke a server limit: round down instead
            w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
        url = _size_url(service, w, h, by_width=method == "computed")
        return ImageRequest(url, w, h, width, height, "scaled", method)
    if longest <= max_side:
        return full
    listed = sorted((s for s in service.sizes if s[0] <= width and s[1] <= height), key=max)
    big_enough = [s for s in listed if max(s) >= max_side]
    usable = big_enough[:1] or [s for s in listed if max(s) >= min_side][-1:]
    if not usable or usable[0] == (width, height):
        return full
    w, h = usable[0]
    return ImageRequest(_size_url(service, w, h), w, h, width, height, "listed_size", method)

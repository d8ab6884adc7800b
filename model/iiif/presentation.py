"""IIIF Presentation 2.x and 3.0 documents: the canvases of a manifest, the members of a collection.

Lenient by design: `@id` or `id`, labels as strings or language maps, a single object where a
list belongs, images without a service or a size. A canvas with nothing to analyse (audio, video,
text, no painting annotation) is returned with a `skip_reason` instead of being dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from model.iiif.image_api import ImageService, parse_service
from model.iiif.jsonld import (
    InvalidNumber,
    as_list,
    contexts,
    label_text,
    node_id,
    node_type,
    scalar_text,
    size_value,
    xywh_fragment,
)

Kind = Literal["manifest", "collection"]


@dataclass(frozen=True)
class CanvasImage:
    url: str | None  # the image resource itself (what is fetched when there is no service)
    width: int | None
    height: int | None
    service: ImageService | None
    # Where on the canvas the image is painted (x, y, w, h); None: the whole canvas.
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Canvas:
    id: str
    label: str
    width: int | None
    height: int | None
    image: CanvasImage | None
    skip_reason: str | None = None


@dataclass(frozen=True)
class Member:
    """A collection's manifest or sub-collection: a reference, or embedded in full."""

    id: str | None
    kind: Kind
    label: str
    embedded: dict[str, Any] | None = None


@dataclass
class Document:
    kind: Kind
    id: str
    label: str
    version: int  # Presentation API major version: 2 or 3
    canvases: list[Canvas] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    # The JSON it was read from (kept with a detect task's result, for the viewer manifest).
    source: dict[str, Any] | None = field(default=None, repr=False, compare=False)


class NotIiif(ValueError):
    """The JSON is neither a IIIF manifest nor a collection."""


def document_kind(doc: Any) -> Kind | None:
    kind = node_type(doc)
    if kind in ("manifest", "collection"):
        return kind  # type: ignore[return-value]
    return None


def presentation_version(doc: dict[str, Any]) -> int:
    joined = " ".join(contexts(doc))
    if "presentation/3" in joined:
        return 3
    if "presentation/2" in joined or "@type" in doc:
        return 2
    return 3 if "type" in doc else 2


def parse_document(doc: Any) -> Document:
    """Raises NotIiif, also for a document nested too deeply to walk (RecursionError)."""
    try:
        return _parse_document(doc)
    except RecursionError:
        raise NotIiif("nested too deeply to read") from None


def _parse_document(doc: Any) -> Document:
    kind = document_kind(doc)
    if kind is None or not isinstance(doc, dict):
        raise NotIiif("not a IIIF manifest or collection (no Manifest/Collection type)")
    version = presentation_version(doc)
    parsed = Document(kind, node_id(doc) or "", label_text(doc.get("label")), version)
    parsed.source = doc
    if kind == "manifest":
        parsed.canvases = _canvases_v3(doc) if version == 3 else _canvases_v2(doc)
        if not parsed.canvases:  # a manifest labelled one version but shaped as the other
            parsed.canvases = _canvases_v2(doc) if version == 3 else _canvases_v3(doc)
    else:
        parsed.members = _members(doc)
    return parsed


# --- 3.0: Manifest.items[Canvas].items[AnnotationPage].items[Annotation].body -----------------


def _canvases_v3(doc: dict[str, Any]) -> list[Canvas]:
    return [_checked(_canvas_v3, c) for c in as_list(doc.get("items")) if node_type(c) == "canvas"]


def _canvas_v3(canvas: dict[str, Any]) -> Canvas:
    base = _canvas_base(canvas)
    painting = [
        anno
        for page in as_list(canvas.get("items"))
        for anno in as_list(page.get("items") if isinstance(page, dict) else None)
        if isinstance(anno, dict) and _is_painting(anno)
    ]
    if not painting:
        return Canvas(**base, image=None, skip_reason="no painting annotation (nothing to analyse)")
    kinds = []
    for anno in painting:
        for body in as_list(anno.get("body")):
            body = _choose(body)
            if _is_image(body):
                return Canvas(**base, image=_image(body, _target_region(anno.get("target")), 3))
            kinds.append(node_type(body) or "unknown")
    return Canvas(
        **base, image=None, skip_reason=f"no image on this canvas (content: {', '.join(kinds)})"
    )


# --- 2.x: Manifest.sequences[].canvases[Canvas].images[Annotation].resource -------------------


def _canvases_v2(doc: dict[str, Any]) -> list[Canvas]:
    """The canvases of every sequence, each once (by id), in the order they first appear.

    Most manifests have one sequence; the others' sequences are alternative orders of mostly the
    same canvases, but a canvas may appear in a later one only, and must not be lost. A later
    sequence may name a canvas by its id alone: one described nowhere is skipped, said so."""
    sequences = [s for s in as_list(doc.get("sequences")) if isinstance(s, dict)]
    entries = [(n, c) for n, s in enumerate(sequences, 1) for c in as_list(s.get("canvases"))]
    described = {}
    for _, canvas in entries:
        if isinstance(canvas, dict) and (key := node_id(canvas)):
            described.setdefault(key, canvas)
    canvases, seen = [], set()
    for number, entry in entries:
        key = node_id(entry)
        if key in seen:
            continue
        if key:
            seen.add(key)
        if isinstance(entry, dict) or key in described:
            canvases.append(_checked(_canvas_v2, described.get(key or "", entry)))
        elif key:
            reason = f"sequence {number} names this canvas without describing it"
            canvases.append(Canvas(key, "", None, None, image=None, skip_reason=reason))
    return canvases


def _canvas_v2(canvas: dict[str, Any]) -> Canvas:
    base = _canvas_base(canvas)
    kinds = []
    for anno in as_list(canvas.get("images")):
        if not isinstance(anno, dict):
            continue
        resource = _choose(anno.get("resource"))
        if _is_image(resource):
            return Canvas(**base, image=_image(resource, _target_region(anno.get("on")), 2))
        kinds.append(node_type(resource) or "unknown")
    reason = (
        f"no image on this canvas (content: {', '.join(kinds)})"
        if kinds
        else "no image on this canvas"
    )
    return Canvas(**base, image=None, skip_reason=reason)


# --- shared ------------------------------------------------------------------------------------


def _checked(parse: Callable[[dict[str, Any]], Canvas], canvas: dict[str, Any]) -> Canvas:
    """A canvas whose sizes or region are unusable (1e999, negative, absurd) is skipped with the
    reason: one broken canvas should not sink the manifest, nor reach size arithmetic."""
    try:
        return parse(canvas)
    except InvalidNumber as exc:
        return Canvas(
            id=node_id(canvas) or "",
            label=label_text(canvas.get("label")),
            width=None,
            height=None,
            image=None,
            skip_reason=f"invalid size in the manifest ({exc})",
        )


def _canvas_base(canvas: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": node_id(canvas) or "",
        "label": label_text(canvas.get("label")),
        "width": size_value(canvas.get("width"), "canvas width"),
        "height": size_value(canvas.get("height"), "canvas height"),
    }


def _is_painting(anno: dict[str, Any]) -> bool:
    motivations = [
        scalar_text(m).rsplit(":", 1)[-1].lower() for m in as_list(anno.get("motivation"))
    ]
    return not motivations or "painting" in motivations


def _choose(body: Any) -> Any:
    """A Choice stands for alternatives: take its default (2.x) or its first item."""
    if node_type(body) != "choice":
        return body
    options = as_list(body.get("default")) + as_list(body.get("items")) + as_list(body.get("item"))
    return next((o for o in options if isinstance(o, dict)), None)


def _is_image(body: Any) -> bool:
    if not isinstance(body, dict) or not (node_id(body) or body.get("service")):
        return False
    kind = node_type(body)
    fmt = scalar_text(body.get("format"))
    return kind == "image" or fmt.startswith("image/") or (not kind and bool(body.get("service")))


def _image(
    body: dict[str, Any], region: tuple[int, int, int, int] | None, version: int
) -> CanvasImage:
    return CanvasImage(
        url=node_id(body),
        width=size_value(body.get("width"), "image width"),
        height=size_value(body.get("height"), "image height"),
        service=parse_service(body.get("service"), default_version=version),
        region=region,
    )


def _target_region(target: Any) -> tuple[int, int, int, int] | None:
    if isinstance(target, str):
        return xywh_fragment(target)
    if isinstance(target, dict):
        for selector in as_list(target.get("selector")):
            if isinstance(selector, dict) and isinstance(selector.get("value"), str):
                return xywh_fragment(selector["value"])
        return xywh_fragment(node_id(target))
    return None


def _members(doc: dict[str, Any]) -> list[Member]:
    # 3.0: items; 2.x: manifests, collections and/or members.
    nodes = as_list(doc.get("items")) + as_list(doc.get("members"))
    nodes += as_list(doc.get("collections")) + as_list(doc.get("manifests"))
    members = []
    for node in nodes:
        kind = document_kind(node)
        if kind is None:
            continue
        has_content = any(
            k in node for k in ("items", "sequences", "manifests", "collections", "members")
        )
        members.append(
            Member(
                node_id(node), kind, label_text(node.get("label")), node if has_content else None
            )
        )
    return members

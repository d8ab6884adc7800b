"""Ground-truth boxes from IIIF annotations, as people really send them (pure Python, light: the
API checks inline annotations with it before queueing).

Read:
- Presentation 3 `AnnotationPage`s (`items`), 2.x `sc:AnnotationList`s (`resources`), a bare
  annotation or a JSON list of any of these; the service's own detect `format=iiif` output too;
- targets: `canvas#xywh=x,y,w,h` (also `xywh=pixel:`), or a `SpecificResource` (`oa:` too) whose
  `source`/`full` is the canvas and whose `selector` is, or lists, or offers as `oa:Choice`
  `default`, a `FragmentSelector` (Mirador's editors write a FragmentSelector beside an
  SvgSelector); 2.x `on`, possibly a list;
- the label: a tagging body (3: `TextualBody` with purpose `tagging`; 2.x `oa:Tag` `chars`), else
  the one text body that is not a comment; none: the job's default class. Commenting bodies (our
  own "confidence 0.93") are ignored.

What is not a box (a whole-canvas comment, a painting annotation) is reported, not guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from model.iiif.jsonld import as_list, node_id, node_type

_XYWH = re.compile(r"xywh=(?:pixel:)?\s*([-\d.]+),([-\d.]+),([-\d.]+),([-\d.]+)\s*$")
OUTSIDE_TOLERANCE_PX = 2.0  # rounding in editors: a box may overshoot its canvas by this much


@dataclass(frozen=True)
class TruthBox:
    canvas: str
    label: str | None  # None: the job's default class
    xywh: tuple[float, float, float, float]


@dataclass
class Parsed:
    boxes: list[TruthBox] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def problem(self, code: str, message: str) -> None:
        if len(self.problems) < 50:  # enough to see what is wrong; a bad file has thousands
            self.problems.append({"code": code, "message": message})

    def by_canvas(self) -> dict[str, list[TruthBox]]:
        found: dict[str, list[TruthBox]] = {}
        for box in self.boxes:
            found.setdefault(box.canvas, []).append(box)
        return found


def _fragment(value: str) -> tuple[float, float, float, float] | None:
    found = _XYWH.search(value)
    try:
        return tuple(float(v) for v in found.groups()) if found else None  # type: ignore[return-value]
    except ValueError:  # "1.2.3", "-", "."
        return None


def _selector_value(selector: Any) -> str | None:
    for option in as_list(selector):
        if not isinstance(option, dict):
            continue
        kind = str(option.get("type") or option.get("@type") or "")
        if kind.endswith("Choice"):
            found = _selector_value(option.get("default"))
            if found:
                return found
        elif kind.endswith("FragmentSelector") and isinstance(option.get("value"), str):
            return option["value"]
    return None


def _target(target: Any) -> tuple[str, tuple[float, float, float, float] | None] | None:
    """(canvas id, box or None) of one target, or None when it names no canvas."""
    if isinstance(target, str):
        canvas, _, fragment = target.partition("#")
        return canvas, _fragment(fragment) if fragment else None
    if not isinstance(target, dict):
        return None
    source = target.get("source", target.get("full"))
    canvas = source if isinstance(source, str) else node_id(source) if source else node_id(target)
    if not canvas:
        return None
    canvas, _, fragment = canvas.partition("#")
    value = _selector_value(target.get("selector")) or fragment
    return canvas, _fragment(value) if value else None


def _texts(bodies: Any) -> list[tuple[str, str]]:
    """(purpose, text) of each textual body; 2.x tags read as purpose tagging."""
    found = []
    for body in as_list(bodies):
        if isinstance(body, str):
            continue  # a body by reference: nothing to read
        if not isinstance(body, dict):
            continue
        kind = str(body.get("type") or body.get("@type") or "")
        text = body.get("value", body.get("chars"))
        if not isinstance(text, str) or not text.strip():
            continue
        purpose = str(body.get("purpose") or ("tagging" if kind == "oa:Tag" else ""))
        found.append((purpose.removeprefix("oa:"), re.sub(r"<[^>]+>", "", text).strip()))
    return found


def label_of(annotation: dict[str, Any]) -> str | None:
    texts = _texts(annotation.get("body", annotation.get("resource")))
    tags = [text for purpose, text in texts if purpose == "tagging"]
    if tags:
        return tags[0]
    others = [text for purpose, text in texts if purpose not in ("commenting", "describing")]
    return others[0] if len(others) == 1 else None


def _annotations(document: Any) -> list[Any]:
    if isinstance(document, list):
        return [a for d in document for a in _annotations(d)]
    if not isinstance(document, dict):
        return []
    kind = node_type(document)
    if kind in ("annotationpage", "annotationlist"):
        return as_list(document.get("items", document.get("resources")))
    return [document] if kind == "annotation" else []


def parse(documents: list[Any], into: Parsed | None = None) -> Parsed:
    parsed = into or Parsed()
    for number, annotation in enumerate(_annotations(documents)):
        if not isinstance(annotation, dict):
            parsed.problem("not_an_annotation", f"annotation {number}: not a JSON object")
            continue
        motivation = " ".join(str(m) for m in as_list(annotation.get("motivation")))
        if "painting" in motivation:
            continue  # an image on a canvas, not a box
        where = annotation.get("target", annotation.get("on"))
        targets = [t for t in (_target(x) for x in as_list(where)) if t is not None]
        name = node_id(annotation) or f"annotation {number}"
        if not targets:
            parsed.problem("no_target", f"{name}: targets no canvas")
            continue
        label = label_of(annotation)
        for canvas, xywh in targets:
            if xywh is None:
                parsed.problem("no_box", f"{name}: targets the whole canvas {canvas}, not a box")
            elif xywh[2] <= 0 or xywh[3] <= 0:
                parsed.problem("empty_box", f"{name}: box {xywh} has no area")
            else:
                parsed.boxes.append(TruthBox(canvas, label, xywh))
    return parsed


def outside_canvas(
    boxes: list[TruthBox], size: tuple[float | None, float | None]
) -> tuple[str, str] | None:
    """Why a page's boxes cannot be judged or learnt from when some lie outside its canvas (a
    canvas of unknown size: None, nothing to check against)."""
    width, height = size
    if not (width and height):
        return None
    outside = [
        b.xywh
        for b in boxes
        if b.xywh[0] < -OUTSIDE_TOLERANCE_PX
        or b.xywh[1] < -OUTSIDE_TOLERANCE_PX
        or b.xywh[0] + b.xywh[2] > width + OUTSIDE_TOLERANCE_PX
        or b.xywh[1] + b.xywh[3] > height + OUTSIDE_TOLERANCE_PX
    ]
    if not outside:
        return None
    return (
        "boxes_outside_canvas",
        f"{len(outside)} box(es) outside the {width}x{height} canvas, e.g. {list(outside[0])}",
    )


def labels_of(boxes: list[TruthBox], default: str | None) -> list[str] | tuple[str, str]:
    """Each box's label (the default for a box without one), or why the page has none to give."""
    labels = [b.label or default for b in boxes]
    if None in labels:
        return (
            "no_label",
            "annotations without a label, and the model has several classes: set "
            "params.default_class",
        )
    return [str(label) for label in labels]


def annotation_references(manifest: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """The annotations a manifest carries for its canvases: embedded pages and lists, and the
    URLs of those it only references (3.0 `annotations`, 2.x `otherContent`)."""
    embedded: list[Any] = []
    urls: list[str] = []
    canvases = as_list(manifest.get("items")) + [
        c
        for s in as_list(manifest.get("sequences"))
        if isinstance(s, dict)
        for c in as_list(s.get("canvases"))
    ]
    for canvas in canvases:
        if not isinstance(canvas, dict):
            continue
        for page in as_list(canvas.get("annotations")) + as_list(canvas.get("otherContent")):
            if isinstance(page, str):
                urls.append(page)
            elif isinstance(page, dict) and ("items" in page or "resources" in page):
                embedded.append(page)
            elif isinstance(page, dict) and node_id(page):
                urls.append(node_id(page) or "")
    return embedded, urls

"""Detections as W3C Web Annotations that IIIF viewers (Mirador, Universal Viewer) open, and the
manifest a viewer is given to show them.

One page per canvas, at a stable URL of its own (`ResultLinks`), and one per manifest with all
of them: a Presentation 3 `AnnotationPage` for 3.0 manifests, a Presentation 2 `sc:AnnotationList`
(Open Annotation) for 2.x ones. Every annotation targets its canvas with a media fragment,
`canvas-id#xywh=x,y,w,h`, in canvas coordinates, and its id is its canvas page's URL with a
fragment: dereferenced, it gives the page that holds it. The label is a tagging body and the
confidence a commenting one, and the motivation names both: with `tagging` alone, viewers show
every body as a tag chip.

`viewer_manifest` is the source manifest (kept by the detect job) with each analysed canvas
pointing at its page (3.0 `annotations`, 2.x `otherContent`): one URL a viewer can open.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from model.iiif.jsonld import as_list, node_id, node_type
from model.outputs.vector import bbox, selector_svg

PRESENTATION_3 = "http://iiif.io/api/presentation/3/context.json"
PRESENTATION_2 = "http://iiif.io/api/presentation/2/context.json"
MEDIA_FRAGMENTS = "http://www.w3.org/TR/media-frags/"


@dataclass(frozen=True)
class ResultLinks:
    """Where a finished task's IIIF documents live: `base` is `<http.public_url>/result/<id>`
    (never the request's Host header). Read through a share link, every URL carries its token,
    so a viewer that cannot send a key can follow them."""

    base: str
    token: str | None = None

    @classmethod
    def of_task(cls, public_base_url: str, task_id: str, token: str | None = None) -> ResultLinks:
        return cls(f"{public_base_url}/result/{task_id}", token)

    def _url(self, path: str) -> str:
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        return f"{self.base}{path}{query}"

    def manifest(self, manifest: int) -> str:
        return self._url(f"/iiif/manifest/{manifest}")

    def manifest_page(self, manifest: int) -> str:
        return self._url(f"/iiif/manifest/{manifest}/annotations")

    def canvas_page(self, manifest: int, canvas: int) -> str:
        return self._url(f"/iiif/manifest/{manifest}/canvas/{canvas}/annotations")

    def annotation(self, manifest: int, canvas: int, number: int) -> str:
        return f"{self.canvas_page(manifest, canvas)}#detection-{number}"

    def result(self, fmt: str = "json") -> str:
        query = f"?format={fmt}" + (f"&token={quote(self.token, safe='')}" if self.token else "")
        return f"{self.base}{query}"


def canvas_number(item: dict[str, Any]) -> int:
    """The canvas's position in its manifest (items stored before it was recorded: their
    index in the task, as unique and as stable)."""
    return int(item.get("canvas_index", item["index"]))


def analysed_canvases(items: list[dict[str, Any]], manifest: int) -> list[dict[str, Any]]:
    """The manifest's canvases that were analysed, in canvas order (a failed page has no page)."""
    found = [i for i in items if i.get("manifest") == manifest and i.get("status") == "ok"]
    return sorted(found, key=canvas_number)


def _target(item: dict[str, Any], xywh: list[int]) -> str:
    canvas = item["canvas_id"].split("#", 1)[0]
    return f"{canvas}#xywh={','.join(str(max(0, round(v))) for v in xywh)}"


def _comment(detection: dict[str, Any]) -> str:
    if "confidence" not in detection:
        return detection.get("note", "")
    return f"{detection.get('note', 'confidence')} {detection['confidence']:.2f}"


# An evaluate task's pages show what went wrong: ground truth the model missed, and detections
# where the ground truth has nothing, each in its own colour (a CSS class in the annotation's
# stylesheet, for viewers that apply one; the tag says it too, for those that do not).
MARKS = {"misses": ("miss", "#d62728"), "false_alarms": ("false-alarm", "#ff7f0e")}
MARK_NOTES = {"miss": "missed by the model", "false-alarm": "false alarm, confidence"}


def boxes_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The boxes an item shows: a detect item's detections, an evaluate item's misses and false
    alarms (marked with their style)."""
    if "detections" in item:
        return item["detections"]
    return [
        {**box, "style": style, "note": MARK_NOTES[style], "label": f"{style}: {box['label']}"}
        for key, (style, _) in MARKS.items()
        for box in item.get(key, [])
    ]


def _styled_target(target: str, style: str, v2: bool = False) -> dict[str, Any]:
    canvas, _, fragment = target.partition("#")
    selector = {"type": "FragmentSelector", "conformsTo": MEDIA_FRAGMENTS, "value": fragment}
    if v2:
        return {
            "@type": "oa:SpecificResource",
            "full": canvas,
            "selector": {"@type": "oa:FragmentSelector", "value": fragment},
            "style": style,
        }
    return {"type": "SpecificResource", "source": canvas, "selector": selector, "styleClass": style}


def _stylesheet(style: str) -> dict[str, str]:
    colour = dict(MARKS.values())[style]
    return {"type": "CssStylesheet", "value": f".{style} {{ stroke: {colour}; color: {colour} }}"}


def _text(value: str, purpose: str) -> dict[str, str]:
    return {"type": "TextualBody", "value": value, "purpose": purpose, "format": "text/plain"}


def _v3_annotation(anno_id: str, item: dict[str, Any], detection: dict[str, Any]) -> dict:
    annotation = {
        "id": anno_id,
        "type": "Annotation",
        "motivation": ["commenting", "tagging"],
        "body": [_text(detection["label"], "tagging"), _text(_comment(detection), "commenting")],
        "target": _target(item, detection["xywh"]),
    }
    if style := detection.get("style"):
        annotation.update(
            stylesheet=_stylesheet(style), target=_styled_target(annotation["target"], style)
        )
    return annotation


def _v2_annotation(anno_id: str, item: dict[str, Any], detection: dict[str, Any]) -> dict:
    return {
        "@id": anno_id,
        "@type": "oa:Annotation",
        "motivation": ["oa:commenting", "oa:tagging"],
        "resource": [
            {"@type": "oa:Tag", "chars": detection["label"]},
            {"@type": "dctypes:Text", "format": "text/plain", "chars": _comment(detection)},
        ],
        "on": _target(item, detection["xywh"])
        if not detection.get("style")
        else _styled_target(_target(item, detection["xywh"]), detection["style"], v2=True),
    }


def _primitive_body(p: dict[str, Any]) -> list[dict[str, str]]:
    return [_text(p["kind"], "tagging"), _text(_comment(p), "commenting")]


def _v3_primitive(anno_id: str, item: dict[str, Any], p: dict[str, Any]) -> dict:
    """A vectorize primitive: an SvgSelector (what Mirador draws) beside a FragmentSelector
    (its box, for viewers that read boxes only)."""
    xywh = ",".join(str(v) for v in bbox(p))
    return {
        "id": anno_id,
        "type": "Annotation",
        "motivation": ["commenting", "tagging"],
        "body": _primitive_body(p),
        "target": {
            "type": "SpecificResource",
            "source": item["canvas_id"].split("#", 1)[0],
            "selector": [
                {"type": "SvgSelector", "value": selector_svg(p)},
                {
                    "type": "FragmentSelector",
                    "conformsTo": MEDIA_FRAGMENTS,
                    "value": f"xywh={xywh}",
                },
            ],
        },
    }


def _v2_primitive(anno_id: str, item: dict[str, Any], p: dict[str, Any]) -> dict:
    xywh = ",".join(str(v) for v in bbox(p))
    return {
        "@id": anno_id,
        "@type": "oa:Annotation",
        "motivation": ["oa:commenting", "oa:tagging"],
        "resource": [
            {"@type": "oa:Tag", "chars": p["kind"]},
            {"@type": "dctypes:Text", "format": "text/plain", "chars": _comment(p)},
        ],
        "on": {
            "@type": "oa:SpecificResource",
            "full": item["canvas_id"].split("#", 1)[0],
            "selector": {
                "@type": "oa:Choice",
                "default": {"@type": "oa:FragmentSelector", "value": f"xywh={xywh}"},
                "item": {"@type": "oa:SvgSelector", "value": selector_svg(p)},
            },
        },
    }


def annotation_page(
    manifest: dict[str, Any],
    items: list[dict[str, Any]],
    links: ResultLinks,
    canvas: int | None = None,
) -> dict[str, Any]:
    """The annotations of one manifest (a provenance `manifests` entry), or of one of its
    canvases (its position in the manifest), as a page (3.0) or a list (2.x)."""
    index = manifest["index"]
    pages = analysed_canvases(items, index)
    if canvas is None:
        page_id = links.manifest_page(index)
        label = f"Detections on {manifest.get('label') or manifest.get('id')}"
    else:
        page_id = links.canvas_page(index, canvas)
        pages = [i for i in pages if canvas_number(i) == canvas]
        label = f"Detections on {pages[0].get('label') or pages[0]['canvas_id']}" if pages else ""
    version = manifest.get("version")
    build = _v2_annotation if version == 2 else _v3_annotation
    annotations = [
        build(links.annotation(index, canvas_number(item), number), item, detection)
        for item in pages
        for number, detection in enumerate(boxes_of(item))
    ]
    primitive = _v2_primitive if version == 2 else _v3_primitive
    annotations += [  # vectorize items (a detect task's regions share their canvas)
        primitive(
            f"{links.canvas_page(index, canvas_number(item))}#primitive-{item['index']}-{n}",
            item,
            p,
        )
        for item in pages
        for n, p in enumerate(item.get("primitives", []))
    ]
    if version == 2:
        return {
            "@context": PRESENTATION_2,
            "@id": page_id,
            "@type": "sc:AnnotationList",
            "label": label,
            "resources": annotations,
        }
    return {
        "@context": PRESENTATION_3,
        "id": page_id,
        "type": "AnnotationPage",
        "label": {"none": [label]},
        "items": annotations,
    }


def viewer_manifest(
    source: dict[str, Any],
    manifest: dict[str, Any],
    items: list[dict[str, Any]],
    links: ResultLinks,
) -> dict[str, Any]:
    """The source manifest, now at our URL, each analysed canvas referencing its page: 3.0
    `annotations` (AnnotationPage), 2.x `otherContent` (sc:AnnotationList), after whatever
    annotations the publisher already listed there."""
    index = manifest["index"]
    pages = {item["canvas_id"]: canvas_number(item) for item in analysed_canvases(items, index)}
    doc = copy.deepcopy(source)
    doc["@id" if "@id" in doc else "id"] = links.manifest(index)
    sequences = [s for s in as_list(doc.get("sequences")) if isinstance(s, dict)]
    v2_canvases = [c for s in sequences for c in as_list(s.get("canvases"))]
    in_sequence = {id(c) for c in v2_canvases}
    for canvas in v2_canvases + as_list(doc.get("items")):
        if not isinstance(canvas, dict) or node_type(canvas) != "canvas":
            continue
        number = pages.get(node_id(canvas) or "")
        if number is None:
            continue
        if manifest.get("version") == 2 and id(canvas) in in_sequence:
            reference = {"@id": links.canvas_page(index, number), "@type": "sc:AnnotationList"}
            canvas["otherContent"] = [*as_list(canvas.get("otherContent")), reference]
        else:
            reference = {"id": links.canvas_page(index, number), "type": "AnnotationPage"}
            canvas["annotations"] = [*as_list(canvas.get("annotations")), reference]
    return doc

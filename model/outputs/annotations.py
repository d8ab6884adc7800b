"""Detections as W3C Web Annotations that IIIF viewers (Mirador, Universal Viewer) open.

One page per manifest: a Presentation 3 `AnnotationPage` for 3.0 manifests, a Presentation 2
`sc:AnnotationList` (Open Annotation) for 2.x ones. Every annotation targets its canvas with a
media fragment, `canvas-id#xywh=x,y,w,h`, in canvas coordinates; the label is a tagging body and
the confidence a commenting one (viewers show both).
"""

from __future__ import annotations

from typing import Any

PRESENTATION_3 = "http://iiif.io/api/presentation/3/context.json"
PRESENTATION_2 = "http://iiif.io/api/presentation/2/context.json"


def _target(item: dict[str, Any], xywh: list[int]) -> str:
    canvas = item["canvas_id"].split("#", 1)[0]
    return f"{canvas}#xywh={','.join(str(max(0, v)) for v in xywh)}"


def _annotations(items: list[dict[str, Any]], manifest_index: int) -> list[tuple[str, dict, dict]]:
    """(annotation id suffix, item, detection) of one manifest's detections, in canvas order."""
    found = []
    for item in sorted(items, key=lambda i: i["index"]):
        if item.get("manifest") != manifest_index or item.get("status") != "ok":
            continue
        for number, detection in enumerate(item.get("detections", [])):
            found.append((f"{item['index']}-{number}", item, detection))
    return found


def annotation_page(
    manifest: dict[str, Any], items: list[dict[str, Any]], page_id: str
) -> dict[str, Any]:
    """The annotations of one manifest (a provenance `manifests` entry) as a page/list."""
    found = _annotations(items, manifest["index"])
    label = f"Detections on {manifest.get('label') or manifest.get('id')}"
    if manifest.get("version") == 2:
        return {
            "@context": PRESENTATION_2,
            "@id": page_id,
            "@type": "sc:AnnotationList",
            "label": label,
            "resources": [
                {
                    "@id": f"{page_id}/annotation/{suffix}",
                    "@type": "oa:Annotation",
                    "motivation": ["oa:tagging", "oa:commenting"],
                    "resource": [
                        {"@type": "oa:Tag", "chars": detection["label"]},
                        {
                            "@type": "dctypes:Text",
                            "format": "text/plain",
                            "chars": f"{detection['label']} ({detection['confidence']:.2f})",
                        },
                    ],
                    "on": _target(item, detection["xywh"]),
                }
                for suffix, item, detection in found
            ],
        }
    return {
        "@context": PRESENTATION_3,
        "id": page_id,
        "type": "AnnotationPage",
        "label": {"none": [label]},
        "items": [
            {
                "id": f"{page_id}/annotation/{suffix}",
                "type": "Annotation",
                "motivation": "tagging",
                "body": [
                    {
                        "type": "TextualBody",
                        "value": detection["label"],
                        "purpose": "tagging",
                        "format": "text/plain",
                    },
                    {
                        "type": "TextualBody",
                        "value": f"{detection['label']} ({detection['confidence']:.2f})",
                        "purpose": "commenting",
                        "format": "text/plain",
                    },
                ],
                "target": _target(item, detection["xywh"]),
            }
            for suffix, item, detection in found
        ],
    }

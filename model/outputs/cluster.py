"""What people look at of a cluster task's result (the API process: light, no numpy):

- `with_links`: the result's clusters with their `prototype_url` (carrying a share token when
  read through one);
- `contact_sheet`: one HTML page, one row per family: the prototype, then each member's
  thumbnail linking to its region. Self-contained: one inline stylesheet allowed by its hash in
  the page's Content-Security-Policy, no script at all;
- `collection` / `cluster_manifest`: a IIIF Presentation 3 Collection with one Manifest per
  family, each canvas one member (its region through the image service where there is one), so
  any IIIF viewer browses a family.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

from model.outputs.annotations import ResultLinks

PRESENTATION_3 = "http://iiif.io/api/presentation/3/context.json"
THUMB_PX = 120
STYLE = (
    "body{font:14px system-ui,sans-serif;margin:1em;background:#faf8f4;color:#222}"
    "h1{font-size:1.2em}.row{display:flex;flex-wrap:wrap;align-items:center;gap:6px;"
    "padding:8px 0;border-bottom:1px solid #ddd}.row h2{font-size:1em;width:100%;margin:0}"
    f".proto{{height:{THUMB_PX + 40}px;border:2px solid #a33;background:#fff}}"
    f".member img{{height:{THUMB_PX}px;display:block}}.member{{font-size:11px;text-align:center}}"
    ".lone img{height:60px}"
)
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"style-src 'sha256-{STYLE_HASH}'",
        "img-src 'self' http: https: data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


def prototype_path(number: int) -> str:
    return f"/clusters/{number}/prototype.png"


def with_links(summary: dict[str, Any], links: ResultLinks) -> dict[str, Any]:
    clusters = [
        {**c, "prototype_url": links._url(prototype_path(c["id"]))}
        for c in summary.get("clusters", [])
    ]
    return {**summary, "clusters": clusters}


def _picture(member: dict[str, Any]) -> str | None:
    """An image URL showing the member: its region, or its own image."""
    return member.get("region_url") or member.get("image_url")


def _where(member: dict[str, Any]) -> str:
    if member.get("image_url"):
        return str(member["image_url"])
    if not (member.get("canvas_id") or member.get("page_url")):  # an upload: upload:<name>
        return str(member.get("source") or f"item {member['index']}")
    return f"{member.get('canvas_id') or member.get('page_url')} xywh={member.get('xywh')}"


def _cell(member: dict[str, Any], css: str, caption: str) -> str:
    """One item on the sheet: its picture (or its number), linking to where it comes from."""
    picture = _picture(member)
    image = (
        f'<img src="{escape(picture)}" alt="item {member["index"]}" loading="lazy">'
        if picture
        else f"item {member['index']}"
    )
    link = escape(picture or member.get("page_url") or "#")
    title = escape(_where(member))
    return f'<a class="{css}" href="{link}" title="{title}">{image}{caption}</a>'


def contact_sheet(task_id: str, summary: dict[str, Any], links: ResultLinks) -> str:
    rows = []
    state = (summary.get("clustering") or {}).get("state", "")
    for cluster in with_links(summary, links)["clusters"]:
        cells = [
            f"<h2>Family {cluster['id']}: {cluster['size']} members, cohesion "
            f"{cluster['cohesion']:.2f}</h2>",
            f'<img class="proto" src="{escape(cluster["prototype_url"])}" '
            f'alt="prototype of family {cluster["id"]}">',
        ]
        cells += [_cell(m, "member", f"{m['score']:.2f}") for m in cluster["members"]]
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    # Every unclustered item, pictured or not (an upload has no URL left to show)
    lone = [_cell(m, "member lone", "") for m in summary.get("unclustered", [])]
    if lone:
        rows.append(f'<div class="row"><h2>Unclustered ({len(lone)})</h2>{"".join(lone)}</div>')
    count = len(summary.get("clusters", []))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Families of task {escape(task_id)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{count} families (clustering {escape(state)}) — task {escape(task_id)}</h1>"
        f"{''.join(rows)}</body></html>"
    )


def _label(text: str) -> dict[str, list[str]]:
    return {"none": [text]}


def _canvas(manifest_id: str, position: int, member: dict[str, Any], item: dict | None) -> dict:
    canvas_id = f"{manifest_id}/canvas/{position}"
    xywh = member.get("xywh")
    if member.get("region_url") and xywh:
        width, height, body_id = xywh[2], xywh[3], member["region_url"]
    else:
        width = (item or {}).get("width") or 1000
        height = (item or {}).get("height") or 1000
        body_id = member.get("image_url") or member.get("page_url")
    # An uploaded image is kept nowhere once the task ends: its canvas has nothing painted
    painting = [] if body_id is None else [_painting(canvas_id, body_id, width, height)]
    return {
        "id": canvas_id,
        "type": "Canvas",
        "label": _label(f"item {member['index']} (score {member['score']:.2f})"),
        "width": width,
        "height": height,
        "metadata": [{"label": _label("source"), "value": _label(_where(member))}],
        "items": [{"id": f"{canvas_id}/page", "type": "AnnotationPage", "items": painting}],
    }


def _painting(canvas_id: str, body_id: str, width: int, height: int) -> dict[str, Any]:
    return {
        "id": f"{canvas_id}/page/image",
        "type": "Annotation",
        "motivation": "painting",
        "body": {
            "id": body_id,
            "type": "Image",
            "format": "image/jpeg",
            "width": width,
            "height": height,
        },
        "target": canvas_id,
    }


def cluster_manifest(
    cluster: dict[str, Any], items: dict[int, dict[str, Any]], links: ResultLinks
) -> dict[str, Any]:
    manifest_id = links._url(f"/clusters/{cluster['id']}/manifest")
    base = manifest_id.split("?")[0]
    return {
        "@context": PRESENTATION_3,
        "id": manifest_id,
        "type": "Manifest",
        "label": _label(f"Family {cluster['id']} ({cluster['size']} members)"),
        "thumbnail": [
            {
                "id": links._url(prototype_path(cluster["id"])),
                "type": "Image",
                "format": "image/png",
            }
        ],
        "items": [
            _canvas(base, n, member, items.get(member["index"]))
            for n, member in enumerate(cluster["members"])
        ],
    }


def collection(task_id: str, summary: dict[str, Any], links: ResultLinks) -> dict[str, Any]:
    return {
        "@context": PRESENTATION_3,
        "id": links.result("iiif"),
        "type": "Collection",
        "label": _label(f"Families of task {task_id}"),
        "items": [
            {
                "id": links._url(f"/clusters/{c['id']}/manifest"),
                "type": "Manifest",
                "label": _label(f"Family {c['id']} ({c['size']} members)"),
                "thumbnail": [
                    {
                        "id": links._url(prototype_path(c["id"])),
                        "type": "Image",
                        "format": "image/png",
                    }
                ],
            }
            for c in summary.get("clusters", [])
        ],
    }

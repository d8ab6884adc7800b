"""Requests per page on a live stack, counted by the image server: a manifest that declares a
level-1/2 service and the image size costs one request per page (no info.json); info.json, when
needed, is read once per service and kept across tasks (Redis); a server refusing the computed
request gets info.json and a size it serves; a level-1 service without info.json still gets a
sized request, not the full image."""

from __future__ import annotations

from typing import Any

import pytest

from synthetic import RenderedPage
from testkit.iiif_server import (
    IiifServer,
    Published,
    Rule,
    v2_canvas,
    v2_manifest,
    v3_canvas,
    v3_manifest,
)
from testkit.stack import Api

pytestmark = pytest.mark.live

SIZED = "full/624,/0/default.jpg"  # 832 px long side (the demo model's 416 x 2) of 1200x1600


def run_manifest(api: Api, url: str) -> dict[str, Any]:
    body = {"type": "detect", "input": {"manifest_url": url}}
    result = api.wait(api.submit_ok(body), timeout_s=180)
    assert result["state"] == "SUCCEEDED", result
    return result


def ok_items(result: dict[str, Any], pages: int) -> list[dict[str, Any]]:
    items = result["result"]["items"]
    assert [i["status"] for i in items] == ["ok"] * pages, items
    return items


def publish(
    server: IiifServer, name: str, pages: list[tuple[RenderedPage, Published]], count: int, **kw
) -> list[Published]:
    """`count` level-1/2 services named `{name}-{i}` over the test pages (reused in turn)."""
    return [
        server.publish_dynamic(f"{name}-{i}", pages[i % len(pages)][0].image, **kw)[0]
        for i in range(count)
    ]


def requests_of(server: IiifServer, version: int, name: str, since: int = 0) -> dict[str, int]:
    """Requests for the services `{name}-*` (and their image resources) since log entry `since`."""
    log = server.log[since:]
    service = [e for e in log if e.path.startswith(f"/dyn{version}/{name}-")]
    return {
        "info.json": sum(e.path.endswith("/info.json") for e in service),
        "sized": sum(not e.path.endswith("/info.json") for e in service),
        "full image": sum(e.path.startswith(f"/originals/{name}-") for e in log),
        "refused": sum(e.status != 200 for e in service),
    }


def v3_body(page: Published, service: dict[str, Any], sized: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": page.full_url,
        "type": "Image",
        "format": "image/jpeg",
        "service": [{"id": page.service_id, **service}],
    }
    if sized:
        body.update(width=page.width, height=page.height)
    return body


def v3_book(server: IiifServer, name: str, bodies: list[dict[str, Any]]) -> str:
    base = f"{server.url}/{name}"
    canvases = [
        v3_canvas(f"{base}/c/{i}", f"p{i}", 1200, 1600, body) for i, body in enumerate(bodies)
    ]
    return server.add_json(
        f"{name}/manifest.json", v3_manifest(f"{base}/manifest.json", name, canvases)
    )


def test_declared_level2_costs_one_request_per_page(
    iiif_api: Api, iiif_server: IiifServer, iiif_pages
) -> None:
    pages = publish(iiif_server, "plan-l2", iiif_pages, 6, version=2, level=2)
    base = f"{iiif_server.url}/plan-l2"
    canvases = []
    for i, page in enumerate(pages):
        resource = {
            "@id": page.full_url,
            "@type": "dctypes:Image",
            "format": "image/jpeg",
            "width": page.width,
            "height": page.height,
            "service": {
                "@context": "http://iiif.io/api/image/2/context.json",
                "@id": page.service_id,
                "profile": ["http://iiif.io/api/image/2/level2.json", {"formats": ["jpg"]}],
            },
        }
        canvases.append(v2_canvas(f"{base}/c/{i}", f"p{i}", 1200, 1600, resource))
    url = iiif_server.add_json("plan-l2/manifest.json", v2_manifest(f"{base}/m", "L2", canvases))
    since = len(iiif_server.log)
    items = ok_items(run_manifest(iiif_api, url), 6)
    counted = requests_of(iiif_server, 2, "plan-l2", since)
    per_page = sum(counted[k] for k in ("info.json", "sized", "full image")) / 6
    assert per_page <= 1.05 and counted["info.json"] == 0, counted
    for item, page in zip(items, pages, strict=True):
        assert item["image_url"] == f"{page.service_id}/{SIZED}"
        assert item["request"]["method"] == "computed"
        assert (item["width"], item["height"]) == (624, 832)


def test_info_json_read_once_per_service_then_kept_across_tasks(
    iiif_api: Api, iiif_server: IiifServer, iiif_pages
) -> None:
    # No declared level: info.json is needed. Four canvases over two services.
    pages = publish(iiif_server, "plan-kept", iiif_pages, 2, version=3, level=2)
    bodies = [v3_body(pages[i % 2], {"type": "ImageService3"}) for i in range(4)]
    url = v3_book(iiif_server, "plan-kept", bodies)
    since = len(iiif_server.log)
    first = ok_items(run_manifest(iiif_api, url), 4)
    counted = requests_of(iiif_server, 3, "plan-kept", since)
    assert counted == {"info.json": 2, "sized": 4, "full image": 0, "refused": 0}, counted
    assert {i["request"]["method"] for i in first} == {"info.json"}

    since = len(iiif_server.log)
    second = ok_items(run_manifest(iiif_api, url), 4)
    counted = requests_of(iiif_server, 3, "plan-kept", since)
    assert counted == {"info.json": 0, "sized": 4, "full image": 0, "refused": 0}, counted
    assert [i["image_url"] for i in second] == [i["image_url"] for i in first]
    assert first[0]["image_url"] == f"{pages[0].service_id}/full/624,832/0/default.jpg"


def test_refused_computed_request_falls_back_to_info_json(
    iiif_api: Api, iiif_server: IiifServer, iiif_pages
) -> None:
    """The manifest declares level 2; the server answers 501 to `w,` (what the worker computes)
    but serves the canonical `w,h` its info.json leads to."""
    pages = publish(iiif_server, "plan-501", iiif_pages, 3, version=3, level=2)
    for page in pages:
        iiif_server.dynamic[f"/dyn3/{page.identifier}"].refuse_by_width = 501
    service = {"type": "ImageService3", "profile": "level2"}
    url = v3_book(iiif_server, "plan-501", [v3_body(p, service) for p in pages])
    since = len(iiif_server.log)
    items = ok_items(run_manifest(iiif_api, url), 3)
    counted = requests_of(iiif_server, 3, "plan-501", since)
    assert counted == {"info.json": 3, "sized": 6, "full image": 0, "refused": 3}, counted
    for item, page in zip(items, pages, strict=True):
        assert item["image_url"] == f"{page.service_id}/full/624,832/0/default.jpg"
        assert (item["width"], item["height"]) == (624, 832)
        assert item["request"]["method"] == "info.json"
        assert "HTTP 501" in item["notes"][0]


@pytest.mark.parametrize("image_size", [True, False], ids=["image-size", "canvas-size"])
def test_level1_without_info_json_still_gets_a_sized_request(
    iiif_api: Api, iiif_server: IiifServer, iiif_pages, image_size: bool
) -> None:
    """As a Riksarkivet v3 manifest: level 1 declared, info.json not to be had (404)."""
    name = f"plan-l1-{image_size}"
    pages = publish(iiif_server, name, iiif_pages, 2, version=3, level=1)
    for page in pages:
        iiif_server.rules[f"/dyn3/{page.identifier}/info.json"] = Rule(status=404)
    service = {"type": "ImageService3", "profile": "level1"}
    url = v3_book(iiif_server, name, [v3_body(p, service, image_size) for p in pages])
    since = len(iiif_server.log)
    items = ok_items(run_manifest(iiif_api, url), 2)
    counted = requests_of(iiif_server, 3, name, since)
    assert counted["full image"] == 0 and counted["sized"] == 2, counted
    for item, page in zip(items, pages, strict=True):
        assert item["image_url"] == f"{page.service_id}/{SIZED}"
        assert (item["width"], item["height"]) == (624, 832)

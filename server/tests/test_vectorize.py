"""The vectorize job on the live stack: diagrams from URLs, uploads and a detect task's regions,
its SVG zip, cancel mid-task, and the 4xx answers to bad input."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zipfile
from typing import Any

import pytest

from model.jobs.vectorize.score import score_image
from server.tests.conftest import ImageServer, jpeg_bytes
from synthetic.diagrams import render_diagram
from testkit.stack import Api

pytestmark = pytest.mark.live

SVG = "{http://www.w3.org/2000/svg}"
CANCEL_IMAGES = 60


@pytest.fixture(scope="module")
def diagram():
    return render_diagram(424_242, long_side=1400)  # larger than max_side: coordinates scale


def test_url_input_gives_primitives_in_full_image_pixels_and_an_svg_zip(
    api: Api, image_server: ImageServer, diagram
) -> None:
    url = image_server.add("diagram.jpg", diagram.jpeg)
    task_id = api.submit_ok({"type": "vectorize", "input": {"image_urls": [url]}})
    body = api.wait(task_id, timeout_s=120)
    assert body["state"] == "SUCCEEDED", body
    (item,) = body["result"]["items"]
    assert (item["width"], item["height"]) == diagram.image.size
    counts = score_image(item["primitives"], diagram.primitives, *diagram.image.size)
    # Found at the analysed size (700 px), given back at 1400 px: they match the truth there.
    assert counts["line"].matched >= 2 and counts["arc"].matched >= 1, counts
    for p in item["primitives"]:
        assert 0 <= p.get("start_deg", 0) < 360 and 0 <= p.get("end_deg", 0) < 360
    provenance = body["result"]["provenance"]
    assert provenance["method"] and provenance["version"]
    assert provenance["params"]["primitives"] == ["line", "circle", "arc"]

    answer = api.request("GET", f"/result/{task_id}?format=svg")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip"
    (name,) = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    root = ET.fromstring(zipfile.ZipFile(io.BytesIO(answer.content)).read(name))
    assert (root.attrib["width"], root.attrib["height"]) == tuple(map(str, diagram.image.size))
    drawn = [c.tag.removeprefix(SVG) for c in root if c.tag != f"{SVG}desc"]
    wanted = {"line": "line", "circle": "circle", "arc": "path"}
    assert drawn == [wanted[p["kind"]] for p in item["primitives"]]


def test_upload_with_a_subset_of_kinds(api: Api, diagram) -> None:
    resp = api.upload([("d.jpg", diagram.jpeg)], params={"primitives": ["line"]}, type="vectorize")
    assert resp.status_code == 202, resp.text
    body = api.wait(resp.json()["task_id"], timeout_s=120)
    assert body["state"] == "SUCCEEDED", body
    kinds = {p["kind"] for p in body["result"]["items"][0]["primitives"]}
    assert kinds == {"line"}


def test_a_detect_tasks_regions_are_vectorized_in_page_coordinates(
    api: Api, image_server: ImageServer, pages
) -> None:
    urls = [image_server.add(f"vec-page-{i}.jpg", jpeg_bytes(p)) for i, p in enumerate(pages[:2])]
    detect = api.submit_ok({"type": "detect", "input": {"image_urls": urls}})
    detected = api.wait(detect, timeout_s=120)
    assert detected["state"] == "SUCCEEDED", detected
    boxes = [(i["index"], d["xywh"]) for i in detected["result"]["items"] for d in i["detections"]]
    assert boxes, "the model found no illustration"

    task_id = api.submit_ok({"type": "vectorize", "input": {"task_id": detect}})
    body = api.wait(task_id, timeout_s=120)
    assert body["state"] == "SUCCEEDED", body
    items = sorted(body["result"]["items"], key=lambda i: i["index"])
    assert [(i["page_index"], i["region"]["xywh"]) for i in items] == boxes
    assert all(i["region"]["image_url"] in urls for i in items)  # no service: cut from the page
    assert any(i["primitives"] for i in items), "nothing found in any illustration"
    for item in items:
        x, y, w, h = item["region"]["xywh"]
        for p in item["primitives"]:  # in the page's coordinates, inside the region
            for px, py in [p[k] for k in ("p0", "p1", "center") if k in p]:
                if p["kind"] == "line":
                    assert x - 2 <= px <= x + w + 2 and y - 2 <= py <= y + h + 2, (p, item)
    assert body["result"]["provenance"]["source_task"] == detect


def _cancel_input(image_server: ImageServer) -> dict[str, Any]:
    urls = [
        image_server.add(f"vec-cancel-{i}.jpg", render_diagram(500_000 + i, long_side=700).jpeg)
        for i in range(CANCEL_IMAGES)
    ]
    return {"image_urls": urls}


def test_cancel_mid_task_keeps_the_finished_items(api: Api, image_server: ImageServer) -> None:
    task_id = api.submit_ok({"type": "vectorize", "input": _cancel_input(image_server)})
    api.wait(task_id, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 1)
    assert api.terminate(task_id).status_code == 202
    body = api.wait(task_id, timeout_s=60)
    assert body["state"] == "CANCELLED"
    done = body["progress"]["done"]
    assert 1 <= done < CANCEL_IMAGES
    assert len(body["result"]["items"]) == done


@pytest.mark.parametrize(
    ("params", "field"),
    [({"primitives": []}, "primitives"), ({"primitives": ["line", "ellipse"]}, "primitives")],
)
def test_bad_primitives_are_refused(api: Api, params, field) -> None:
    resp = api.submit(
        {"type": "vectorize", "input": {"image_urls": ["http://x/a.jpg"]}, "params": params}
    )
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["error"]["message"]


def test_task_id_must_be_a_finished_detect_task_of_this_key(
    api: Api, other_api: Api, image_server: ImageServer, pages
) -> None:
    noop = api.submit_ok({"type": "noop"})
    api.wait(noop)
    resp = api.submit({"type": "vectorize", "input": {"task_id": noop}})
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "source_unusable")

    url = image_server.add("vec-owner.jpg", jpeg_bytes(pages[0]))
    detect = api.submit_ok({"type": "detect", "input": {"image_urls": [url]}})
    api.wait(detect)
    resp = other_api.submit({"type": "vectorize", "input": {"task_id": detect}})
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "source_not_found")
    resp = api.submit({"type": "vectorize", "input": {"task_id": "0" * 32}})
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "source_not_found")
    resp = api.submit({"type": "vectorize", "input": {"task_id": detect, "image_urls": [url]}})
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_input")


def test_svg_format_is_for_vectorize_tasks(api: Api) -> None:
    noop = api.submit_ok({"type": "noop"})
    api.wait(noop)
    resp = api.request("GET", f"/result/{noop}?format=svg")
    assert (resp.status_code, resp.json()["error"]["code"]) == (409, "no_vectors")


def test_regions_come_from_the_pages_image_service(
    iiif_api: Api, iiif_server, level1_server: str, iiif_pages
) -> None:
    """A detect task over a canvas with a level-1 image service: each illustration is asked from
    the service as a region, and its primitives come back in canvas coordinates, inside it."""
    from server.tests.test_crops import _level1_manifest

    page, _ = iiif_pages[0]
    manifest = _level1_manifest(iiif_server, level1_server, page.image.size)
    detect = iiif_api.submit_ok(
        {"type": "detect", "input": {"manifest_url": manifest}, "params": {"confidence": 0.3}}
    )
    assert iiif_api.wait(detect, timeout_s=120)["state"] == "SUCCEEDED"
    task_id = iiif_api.submit_ok({"type": "vectorize", "input": {"task_id": detect}})
    body = iiif_api.wait(task_id, timeout_s=120)
    assert body["state"] == "SUCCEEDED", body
    items = body["result"]["items"]
    assert items and all(i["status"] == "ok" for i in items), items
    assert all(i["coordinates"] == "canvas" and i["canvas_id"] for i in items)
    for item in items:  # asked from the service, just that region
        x, y, w, h = item["region"]["xywh"]
        assert item["region"]["image_url"].startswith(f"{level1_server}/3.0_pil/page/")
        assert f"/{x},{y},{w},{h}/" in item["region"]["image_url"]
    assert any(i["primitives"] for i in items), "nothing found in any illustration"
    for item in items:
        x, y, w, h = item["region"]["xywh"]
        for p in item["primitives"]:
            if p["kind"] == "line":
                for px, py in (p["p0"], p["p1"]):
                    assert x - 2 <= px <= x + w + 2 and y - 2 <= py <= y + h + 2, (p, item)
    # It opens in a viewer like the detect task: the manifest and its annotations carry over.
    annotations = iiif_api.request("GET", f"/result/{task_id}?format=iiif").json()
    selectors = [a["target"]["selector"][0]["type"] for a in annotations["items"]]
    assert selectors == ["SvgSelector"] * sum(len(i["primitives"]) for i in items)

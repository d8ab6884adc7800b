"""Detection end to end through the live stack: uploads, URLs, boxes checked against truth."""

from __future__ import annotations

import pytest

from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.stack import Api

pytestmark = pytest.mark.live


def iou(a: list[float], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter) if inter else 0.0


def test_upload_detects_known_illustrations(api: Api, pages) -> None:
    resp = api.upload([(f"page{i}.jpg", jpeg_bytes(p)) for i, p in enumerate(pages)])
    assert resp.status_code == 202, resp.text
    created = resp.json()
    assert created["state"] == "QUEUED"
    assert resp.headers["Location"] == created["status_url"]

    body = api.wait(created["task_id"])
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": len(pages), "total": len(pages), "failed": 0}
    items = body["result"]["items"]
    assert [item["index"] for item in items] == list(range(len(pages)))
    for item, page in zip(items, pages, strict=True):
        assert (item["width"], item["height"]) == page.image.size
        for truth in page.boxes:
            best = max((iou(d["xywh"], truth) for d in item["detections"]), default=0.0)
            assert best >= 0.5, f"{item['source']}: box {truth} found with IoU {best:.2f}"
    provenance = body["result"]["provenance"]
    assert provenance["model"] == "illustrations-demo"
    assert len(provenance["model_sha256"]) == 64


def test_text_only_page_has_no_detection(api: Api) -> None:
    from synthetic import render_page

    blank = render_page(777_001, n_illustrations=0)
    body = api.wait(api.upload([("text.jpg", jpeg_bytes(blank))]).json()["task_id"])
    assert body["state"] == "SUCCEEDED"
    assert body["result"]["items"][0]["detections"] == []


def test_image_urls_are_fetched(api: Api, image_server: ImageServer, pages) -> None:
    url = image_server.add("url-page.jpg", jpeg_bytes(pages[1]))
    missing = f"{image_server.url}/missing.jpg"
    not_image = image_server.add("notes.txt", b"just some text, not an image")
    task_id = api.submit_ok({"type": "detect", "input": {"image_urls": [url, missing, not_image]}})
    body = api.wait(task_id)
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": 1, "total": 3, "failed": 2}
    ok, gone, text = body["result"]["items"]
    assert ok["status"] == "ok" and ok["source"] == url
    assert len(ok["detections"]) >= len(pages[1].boxes)
    assert gone["status"] == "failed" and gone["error"]["code"] == "http_error"
    assert text["status"] == "failed" and text["error"]["code"] == "not_an_image"


def test_internal_addresses_are_refused(api: Api, image_server: ImageServer, pages) -> None:
    image_server.add("internal.jpg", jpeg_bytes(pages[0]))
    port = image_server.url.rsplit(":", 1)[1]
    # 127.0.0.2 is loopback too, but only 127.0.0.1 is allow-listed for the tests.
    urls = [f"http://127.0.0.2:{port}/internal.jpg", "http://169.254.169.254/latest/meta-data/"]
    body = api.wait(api.submit_ok({"type": "detect", "input": {"image_urls": urls}}))
    assert body["state"] == "SUCCEEDED"
    assert [item["error"]["code"] for item in body["result"]["items"]] == ["blocked_address"] * 2


def test_params_change_the_analysis(api: Api, pages) -> None:
    strict = api.upload([("p.jpg", jpeg_bytes(pages[2]))], params={"confidence": 0.99})
    body = api.wait(strict.json()["task_id"])
    assert body["state"] == "SUCCEEDED"
    assert body["result"]["provenance"]["params"]["confidence"] == 0.99
    assert all(d["confidence"] >= 0.99 for d in body["result"]["items"][0]["detections"])


def test_models_endpoint_lists_the_shipped_model(api: Api) -> None:
    models = api.request("GET", "/models").json()["models"]
    shipped = next(m for m in models if m["name"] == "illustrations-demo")
    assert shipped["default"] is True
    assert shipped["classes"] == ["illustration"]
    assert shipped["input_size"] > 0 and len(shipped["sha256"]) == 64

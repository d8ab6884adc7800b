"""Pages and manifests that go wrong: broken pages fail alone (the job SUCCEEDS with the rest),
an unusable manifest fails the job with a clear code, and nothing reaches a non-allow-listed
address — directly, through a redirect, or through another URL scheme."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from testkit.iiif_server import (
    IiifServer,
    Rule,
    jpeg,
    path_of,
    v3_canvas,
    v3_image,
    v3_manifest,
)
from testkit.stack import Api

pytestmark = pytest.mark.live


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_manifest(api: Api, url: str) -> dict[str, Any]:
    return api.wait(
        api.submit_ok({"type": "detect", "input": {"manifest_url": url}}), timeout_s=180
    )


def test_broken_pages_fail_alone(
    iiif_api: Api, iiif_server: IiifServer, private_server: IiifServer, iiif_pages
) -> None:
    page, published = iiif_pages[0]
    server = iiif_server
    whole = jpeg(page.image)
    private_image = f"{private_server.url}/originals/{published.identifier}.jpg"
    server.rules["/broken/slow.jpg"] = Rule(delay_s=3)
    server.rules["/broken/busy.jpg"] = Rule(fail_times=1, retry_after_s=1)
    server.rules["/broken/to-private.jpg"] = Rule(redirect=private_image)
    server.rules["/broken/to-file.jpg"] = Rule(redirect="file:///etc/passwd")
    images = {
        "good": None,
        "busy": server.add("broken/busy.jpg", whole),
        "missing": f"{server.url}/broken/missing.jpg",
        "slow": server.add("broken/slow.jpg", whole),
        "truncated": server.add("broken/truncated.jpg", whole[: len(whole) // 2]),
        "bomb": server.add("broken/bomb.png", png(Image.new("1", (8000, 8000)))),
        "text": server.add("broken/notes.jpg", b"these are notes, not pixels"),
        "private": private_image,
        "to-private": f"{server.url}/broken/to-private.jpg",
        "file": "file:///etc/passwd",
        "gopher": f"gopher://127.0.0.1:{server.url.rsplit(':', 1)[1]}/x",
        "to-file": f"{server.url}/broken/to-file.jpg",
    }
    base = f"{server.url}/broken"
    canvases = [
        v3_canvas(
            f"{base}/canvas/{name}",
            name,
            1200,
            1600,
            v3_image(published) if url is None else v3_image(None, url),
        )
        for name, url in images.items()
    ]
    url = server.add_json(
        "broken/manifest.json", v3_manifest(f"{base}/manifest.json", "Broken", canvases)
    )
    body = run_manifest(iiif_api, url)
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": 2, "total": 12, "failed": 10}
    outcome = {
        i["label"]: i["error"]["code"] if i["status"] == "failed" else "ok"
        for i in body["result"]["items"]
    }
    assert outcome == {
        "good": "ok",
        "busy": "ok",
        "missing": "http_error",
        "slow": "timeout",
        "truncated": "corrupt_image",
        "bomb": "too_many_pixels",
        "text": "not_an_image",
        "private": "blocked_address",
        "to-private": "blocked_address",
        "file": "bad_scheme",
        "gopher": "bad_scheme",
        "to-file": "bad_scheme",
    }
    errors = {i["label"]: i["error"]["message"] for i in body["result"]["items"] if i["error"]}
    assert "non-public address" in errors["private"] and "HTTP 404" in errors["missing"]
    # The private server never answered a single request: refused before any byte was sent.
    assert private_server.requests_to("/originals") == []
    # 503 + Retry-After: 1 -> retried once, no sooner than asked.
    busy = server.requests_to("/broken/busy.jpg")
    assert [r.status for r in busy] == [503, 200]
    assert busy[1].at - busy[0].at >= 0.95


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/1",
        "ftp://example.org/m.json",
        "not a url",
        "http://",
    ],
)
def test_bad_manifest_url_shape_is_refused_at_submit(iiif_api: Api, url: str) -> None:
    for field_input in (
        {"manifest_url": url},
        {"manifest_urls": ["https://example.org/m.json", url]},
    ):
        resp = iiif_api.submit({"type": "detect", "input": field_input})
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_request" and "not an http(s) URL" in error["message"]


def test_unusable_manifests_fail_the_task_with_a_clear_code(
    iiif_api: Api, iiif_server: IiifServer, private_server: IiifServer, v3_book: str
) -> None:
    private = v3_book.replace(iiif_server.url, private_server.url)
    iiif_server.rules["/redirect/manifest.json"] = Rule(redirect=private)
    cases = {
        private: "manifest_refused",
        f"{iiif_server.url}/redirect/manifest.json": "manifest_refused",
        "http://169.254.169.254/latest/meta-data/": "manifest_refused",
        f"{iiif_server.url}/nowhere/manifest.json": "manifest_unavailable",
        iiif_server.add("odd/notjson.json", b"<html>not json</html>"): "manifest_invalid",
        iiif_server.add_json("odd/other.json", {"hello": "world"}): "manifest_invalid",
    }
    for url, code in cases.items():
        body = run_manifest(iiif_api, url)
        assert body["state"] == "FAILED", (url, body)
        assert body["error"]["code"] == code, (url, body["error"])
        assert url in body["error"]["message"] or path_of(url) in body["error"]["message"]
    assert private_server.requests_to("/v3book") == []


@pytest.fixture(scope="module")
def v3_book(iiif_server: IiifServer, iiif_pages) -> str:
    _, page = iiif_pages[0]
    base = f"{iiif_server.url}/v3small"
    canvas = v3_canvas(f"{base}/canvas/0", "one", 1200, 1600, v3_image(page))
    return iiif_server.add_json(
        "v3small/manifest.json", v3_manifest(f"{base}/manifest.json", "S", [canvas])
    )

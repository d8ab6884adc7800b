"""Bad requests get a clear 4xx JSON error, never a 500 or a traceback."""

from __future__ import annotations

import time

import pytest
import requests

from model.keys import KEY_CACHE_TTL_S
from server.tests.conftest import jpeg_bytes
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live


def error_of(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] and error["message"]
    assert "Traceback" not in resp.text
    return error


def test_missing_and_bad_keys_are_401(stack: Stack) -> None:
    error_of(stack.client(None).request("GET", "/models"), 401)
    error_of(stack.client("sk_not-a-real-key").request("GET", "/models"), 401)
    bearer = requests.get(
        stack.base_url + "/models",
        timeout=10,
        headers={"Authorization": f"Bearer {stack.keys['alice']}"},
    )
    assert bearer.status_code == 200


def test_revoked_key_is_rejected_within_the_key_cache_ttl(stack: Stack) -> None:
    key = stack.create_key("short-lived")
    client = stack.client(key)
    assert client.request("GET", "/models").status_code == 200
    assert stack.cli("keys", "revoke", "short-lived").returncode == 0
    time.sleep(KEY_CACHE_TTL_S)  # each gunicorn process trusts a key it found for this long
    error_of(client.request("GET", "/models"), 401)


def test_unknown_and_foreign_ids_are_404(api: Api, other_api: Api, pages) -> None:
    task_id = api.upload([("p.jpg", jpeg_bytes(pages[0]))]).json()["task_id"]
    for client, tid in [
        (api, "0" * 32),
        (other_api, task_id),
        (api, "../../etc"),
        (api, "x" * 300),
    ]:
        error_of(client.status(tid), 404)
        error_of(client.terminate(tid), 404)
    assert api.wait(task_id)["state"] == "SUCCEEDED"  # bob's attempts changed nothing


def test_malformed_bodies(api: Api) -> None:
    error_of(
        api.request(
            "POST", "/task", data="{not json", headers={"Content-Type": "application/json"}
        ),
        400,
    )
    error_of(api.request("POST", "/task", json=["a", "list"]), 400)
    error_of(
        api.request("POST", "/task", data="type=detect", headers={"Content-Type": "text/plain"}),
        415,
    )
    error_of(api.submit({"type": "nope", "input": {"image_urls": ["http://x.org/a.jpg"]}}), 422)
    error_of(api.submit({"type": "detect"}), 422)  # no input at all
    error_of(api.submit({"type": "detect", "input": {"image_urls": ["file:///etc/passwd"]}}), 422)
    error_of(
        api.submit(
            {
                "type": "detect",
                "input": {"image_urls": ["http://x.org/a.jpg"]},
                "params": {"confidence": 7},
            }
        ),
        422,
    )
    error_of(
        api.submit(
            {"type": "detect", "input": {"image_urls": ["http://x.org/a.jpg"]}, "surprise": 1}
        ),
        422,
    )
    error_of(
        api.request(
            "POST",
            "/task",
            data={"type": "detect", "params": "{oops"},
            files={"images": ("a.jpg", b"x")},
        ),
        400,
    )


def test_model_must_be_a_registered_name(api: Api) -> None:
    body = {"type": "detect", "input": {"image_urls": ["http://x.org/a.jpg"]}}
    traversal = error_of(api.submit({**body, "params": {"model": "../../x.pt"}}), 400)
    assert traversal["code"] == "invalid_model_name"
    unknown = error_of(api.submit({**body, "params": {"model": "no-such-model"}}), 422)
    assert unknown["code"] == "unknown_model"


def test_uploads_must_be_images(api: Api) -> None:
    error = error_of(api.upload([("evil.jpg", b"#!/bin/sh\necho not an image\n")]), 415)
    assert error["code"] == "unsupported_media_type"


def test_too_many_images(api: Api) -> None:
    urls = [f"http://x.org/{i}.jpg" for i in range(501)]
    assert (
        error_of(api.submit({"type": "detect", "input": {"image_urls": urls}}), 422)["code"]
        == "too_many_images"
    )


def test_body_over_limit_is_413(stack: Stack) -> None:
    big = stack.client(stack.keys["alice"])
    resp = big.upload([("huge.jpg", b"\xff" * (51 * 1024 * 1024))])
    error_of(resp, 413)


def test_unknown_route_and_method(api: Api) -> None:
    error_of(api.request("GET", "/nope"), 404)
    error_of(api.request("PUT", "/task"), 405)


def test_openapi_document_is_served(stack: Stack) -> None:
    doc = requests.get(stack.base_url + "/openapi/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert {"/task", "/status/{task_id}", "/terminate/{task_id}", "/models"} <= set(doc["paths"])

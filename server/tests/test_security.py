"""Access control and abuse limits on the live stack: keys, ownership, admin scope, rate limits,
queue backpressure, idempotent submits, body limits, request ids and log privacy."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from model.keys import KEY_CACHE_TTL_S
from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def slow_input(image_server: ImageServer, pages) -> dict:
    url = image_server.add("slow-sec.jpg", jpeg_bytes(pages[0]))
    return {"image_urls": [f"{url}?n={i}" for i in range(120)]}


def test_rotated_key_keeps_tasks_and_kills_old_secret(stack: Stack, pages) -> None:
    old = stack.create_key("rotating")
    task_id = stack.client(old).upload([("p.jpg", jpeg_bytes(pages[0]))]).json()["task_id"]
    result = stack.cli("keys", "rotate", "rotating")
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert new != old
    time.sleep(KEY_CACHE_TTL_S)  # each gunicorn process trusts a key it found for this long
    assert stack.client(old).status(task_id).status_code == 401
    assert stack.client(new).wait(task_id)["state"] == "SUCCEEDED"


def test_listing_shows_own_tasks_only(stack: Stack, pages) -> None:
    mine = stack.client(stack.create_key("lister"))
    theirs = stack.client(stack.create_key("stranger"))
    own_ids = [mine.upload([(f"{i}.jpg", jpeg_bytes(pages[i]))]).json()["task_id"] for i in (0, 1)]
    foreign = theirs.upload([("x.jpg", jpeg_bytes(pages[2]))]).json()["task_id"]
    for task_id in own_ids:
        mine.wait(task_id)

    page = mine.request("GET", "/tasks", params={"limit": 1}).json()
    assert page["total"] == 2 and len(page["tasks"]) == 1 and page["next_offset"] == 1
    assert page["tasks"][0]["task_id"] == own_ids[1]  # newest first
    rest = mine.request("GET", "/tasks", params={"limit": 1, "offset": 1}).json()
    assert rest["tasks"][0]["task_id"] == own_ids[0] and rest["next_offset"] is None
    listed = {t["task_id"] for t in mine.request("GET", "/tasks").json()["tasks"]}
    assert listed == set(own_ids) and foreign not in listed
    succeeded = mine.request("GET", "/tasks", params={"state": "SUCCEEDED"}).json()
    assert succeeded["total"] == 2
    assert mine.request("GET", "/tasks", params={"state": "QUEUED"}).json()["total"] == 0
    assert mine.request("GET", "/tasks", params={"state": "BOGUS"}).status_code == 422
    assert mine.request("GET", "/tasks", params={"scope": "all"}).status_code == 403
    theirs.wait(foreign)


def test_admin_may_see_and_stop_every_task(stack: Stack, slow_input) -> None:
    admin = stack.client(stack.create_key("root-admin", "--admin"))
    user = stack.client(stack.create_key("plain-user"))
    task_id = user.submit_ok({"type": "detect", "input": slow_input})
    assert admin.status(task_id).status_code in (200, 202)
    everyone = admin.request("GET", "/tasks", params={"scope": "all", "limit": 100}).json()
    assert task_id in {t["task_id"] for t in everyone["tasks"]}
    assert admin.terminate(task_id).status_code in (200, 202)
    assert user.wait(task_id)["state"] == "CANCELLED"


def test_rate_limit_per_key(stack: Stack) -> None:
    limited = stack.client(stack.create_key("bursty", "--rate", "5/second"))
    calm = stack.client(stack.create_key("calm"))
    codes = [limited.request("GET", "/models").status_code for _ in range(30)]
    assert codes.count(429) >= 20 and codes[0] == 200
    resp = limited.request("GET", "/models")
    if resp.status_code == 429:  # still inside the window
        assert resp.json()["error"]["code"] == "too_many_requests"
        assert int(resp.headers["Retry-After"]) >= 0
    assert calm.request("GET", "/models").status_code == 200  # other keys unaffected
    assert requests.get(stack.base_url + "/healthz", timeout=5).status_code == 200


def test_per_key_queue_limit(stack: Stack, api: Api, slow_input, pages) -> None:
    capped = stack.client(stack.create_key("capped", "--max-queued", "1"))
    blocker = api.submit_ok({"type": "detect", "input": slow_input})
    api.wait(blocker, {"RUNNING"})
    first = capped.upload([("a.jpg", jpeg_bytes(pages[0]))])
    assert first.status_code == 202
    second = capped.upload([("b.jpg", jpeg_bytes(pages[1]))])
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "too_many_queued"
    assert second.headers["Retry-After"]
    api.terminate(blocker)
    assert capped.wait(first.json()["task_id"])["state"] == "SUCCEEDED"


def test_idempotent_submit_returns_the_same_task(stack: Stack, pages) -> None:
    client = stack.client(stack.create_key("retrier"))
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    image = [("p.jpg", jpeg_bytes(pages[0]))]
    first = client.request(
        "POST", "/task", headers=headers, data={"type": "detect"}, files=[("images", image[0])]
    )
    again = client.request(
        "POST", "/task", headers=headers, data={"type": "detect"}, files=[("images", image[0])]
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    client.wait(first.json()["task_id"])
    assert client.request("GET", "/tasks").json()["total"] == 1


def test_json_depth_and_odd_ids(api: Api) -> None:
    deep: dict = {"type": "detect", "input": {"image_urls": ["http://x.org/a.jpg"]}}
    node = deep
    for _ in range(100):
        node["params"] = {}
        node = node["params"]
    resp = api.submit(deep)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "too_deep"
    bomb = "[" * 200_000 + "]" * 200_000
    resp = api.request("POST", "/task", data=bomb, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    for odd in ["a" * 33, "ÿ" * 32, "0" * 31 + "Z"]:
        assert api.status(odd).status_code == 404
    # nginx, in front, refuses these paths itself (a NUL byte, a climb above /): JSON 400.
    for refused in ["%00", "..%2F..%2Fetc"]:
        resp = api.status(refused)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request"


def test_cors_is_off_by_default(api: Api) -> None:
    resp = api.request("GET", "/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_request_id_and_access_log_privacy(stack: Stack, api: Api) -> None:
    rid = uuid.uuid4().hex
    resp = api.request(
        "GET", "/models", headers={"X-Request-Id": rid, "User-Agent": "PrivateAgent/1.0"}
    )
    assert resp.headers["X-Request-Id"] == rid
    generated = api.request("GET", "/models").headers["X-Request-Id"]
    assert len(generated) == 32
    lines = stack.log_lines("gunicorn", rid)
    assert lines, "the access log should name the request id"
    for line in lines:
        assert "127.0.0.1" not in line and "PrivateAgent" not in line


def test_no_traceback_in_any_error(api: Api) -> None:
    bodies = [b"\xff\xfe", b"{}", json.dumps({"type": None}).encode()]
    for body in bodies:
        resp = api.request("POST", "/task", data=body, headers={"Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500
        assert "Traceback" not in resp.text and resp.json()["error"]["code"]

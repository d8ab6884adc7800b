"""A second stack with tiny limits: result expiry (410), purge of orphaned uploads, the total
queue cap (503) and CORS for a configured origin."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.live import starts_processes
from testkit.stack import Stack, start_stack

pytestmark = pytest.mark.live

TTL_S = 3
MAX_QUEUED_TOTAL = 2
ORIGIN = "https://viewer.example.org"


@pytest.fixture(scope="module")
@starts_processes
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("small"),
        SCRIPTORIUM_RESULTS__TTL_S=str(TTL_S),
        SCRIPTORIUM_RESULTS__PURGE_INTERVAL_S="1",
        SCRIPTORIUM_LIMITS__MAX_QUEUED_TOTAL=str(MAX_QUEUED_TOTAL),
        SCRIPTORIUM_CORS__ORIGINS=json.dumps([ORIGIN]),
    )
    stack.create_key("carol")
    stack.create_key("dave")
    yield stack
    stack.stop()


def test_expired_result_is_410_and_uploads_are_gone(small: Stack, pages) -> None:
    api = small.client(small.keys["carol"])
    task_id = api.upload([("p.jpg", jpeg_bytes(pages[0]))]).json()["task_id"]
    body = api.wait(task_id)
    assert body["state"] == "SUCCEEDED"
    assert body["expires_at"] is not None
    assert not (small.data_dir / "uploads" / task_id).exists()

    time.sleep(TTL_S + 1.5)
    gone = api.status(task_id)
    assert gone.status_code == 410, gone.text
    assert gone.json()["error"]["code"] == "expired"
    assert api.request("GET", "/tasks").json()["total"] == 0
    # Another key cannot even learn that the id existed.
    other = small.client(small.keys["dave"])
    assert other.status(task_id).status_code == 404


def test_orphaned_uploads_are_purged(small: Stack) -> None:
    orphan = small.data_dir / "uploads" / ("f" * 32)
    orphan.mkdir(parents=True)
    (orphan / "00000.jpeg").write_bytes(b"left behind by a crash")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    fresh = small.data_dir / "uploads" / ("e" * 32)  # a submit in progress: must stay
    fresh.mkdir()
    deadline = time.monotonic() + 20
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not orphan.exists()
    assert fresh.exists()


def test_total_queue_cap_is_503(small: Stack, image_server: ImageServer, pages) -> None:
    api = small.client(small.keys["carol"])
    url = image_server.add("cap.jpg", jpeg_bytes(pages[0]))
    running = api.submit_ok({"type": "detect", "input": {"image_urls": [url] * 100}})
    api.wait(running, {"RUNNING"})
    queued = [
        api.submit_ok({"type": "detect", "input": {"image_urls": [url]}})
        for _ in range(MAX_QUEUED_TOTAL)
    ]
    full = api.submit({"type": "detect", "input": {"image_urls": [url]}})
    assert full.status_code == 503, full.text
    assert full.json()["error"]["code"] == "queue_full" and full.headers["Retry-After"]
    for task_id in [running, *queued]:
        api.terminate(task_id)
    assert api.wait(running)["state"] == "CANCELLED"


def test_cors_for_configured_origin(small: Stack) -> None:
    api = small.client(small.keys["carol"])
    allowed = api.request("GET", "/models", headers={"Origin": ORIGIN})
    assert allowed.headers.get("Access-Control-Allow-Origin") == ORIGIN
    other = api.request("GET", "/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers

    # Preflights pass nginx and are answered before the key check (they never carry a key).
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key,content-type,idempotency-key",
    }
    anonymous = small.client(None)
    answered = anonymous.request("OPTIONS", "/task", headers={"Origin": ORIGIN, **preflight})
    assert answered.status_code == 204, answered.text
    assert answered.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-API-Key" in answered.headers["Access-Control-Allow-Headers"]
    refused = anonymous.request(
        "OPTIONS", "/task", headers={"Origin": "https://evil.example", **preflight}
    )
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    # Whatever a preflight says, nginx still refuses methods the API does not use.
    assert anonymous.request("PUT", "/task", headers={"Origin": ORIGIN}).status_code == 405

"""Task lifecycle on the live stack: queue positions, cancel (running and queued), timeouts."""

from __future__ import annotations

from typing import Any

import pytest

from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live

LONG_TASK_IMAGES = 150
MAX_IMAGES = 500  # jobs.detect.max_images


@pytest.fixture(scope="module")
def long_input(image_server: ImageServer, pages) -> dict[str, Any]:
    """Many pages (the same file under many URLs): a task that runs for several seconds."""
    url = image_server.add("long.jpg", jpeg_bytes(pages[0]))
    return {"image_urls": [f"{url}?page={i}" for i in range(LONG_TASK_IMAGES)]}


def started(body: dict[str, Any]) -> bool:
    return body["progress"]["done"] >= 1


def test_cancel_running_task_keeps_worker_and_model(
    stack: Stack, api: Api, long_input, pages
) -> None:
    task_id = api.submit_ok({"type": "detect", "input": long_input})
    api.wait(task_id, {"RUNNING"}, predicate=started)

    resp = api.terminate(task_id)
    assert resp.status_code == 202, resp.text
    body = api.wait(task_id, timeout_s=30)
    assert body["state"] == "CANCELLED"
    done = body["progress"]["done"]
    assert 1 <= done < LONG_TASK_IMAGES
    assert len(body["result"]["items"]) == done  # partial result kept
    cancelled_by = body["result"]["provenance"]

    again = api.terminate(task_id)  # idempotent once terminal
    assert again.status_code == 200 and again.json()["state"] == "CANCELLED"

    # The process that ran it lives on with the model it loaded (a kill would have replaced it;
    # with worker.concurrency children the next task may run in another one).
    assert cancelled_by["worker_pid"] in stack.pool_children()
    next_id = api.upload([("next.jpg", jpeg_bytes(pages[3]))]).json()["task_id"]
    after = api.wait(next_id)
    assert after["state"] == "SUCCEEDED"
    provenance = after["result"]["provenance"]
    assert provenance["model_loads_in_process"] == cancelled_by["model_loads_in_process"] == 1
    assert cancelled_by["worker_pid"] in stack.pool_children()


def test_queue_positions_and_cancel_of_queued_task(
    stack: Stack, api: Api, long_input, pages
) -> None:
    warmup = api.upload([("w.jpg", jpeg_bytes(pages[4]))]).json()["task_id"]
    assert api.wait(warmup)["state"] == "SUCCEEDED"  # gives the ETA a measured duration

    # Every pool child busy with a long task: the next ones queue.
    slots = stack.settings().worker.concurrency
    running = [api.submit_ok({"type": "detect", "input": long_input}) for _ in range(slots)]
    for task_id in running:
        api.wait(task_id, {"RUNNING"})
    first = api.upload([("a.jpg", jpeg_bytes(pages[1]))]).json()["task_id"]
    second = api.upload([("b.jpg", jpeg_bytes(pages[2]))]).json()["task_id"]

    queued = api.status(second)
    assert queued.status_code == 202 and queued.headers["Retry-After"]
    body = queued.json()
    assert body["state"] == "QUEUED"
    assert body["queue_position"] == 2
    assert body["eta_s"] is not None and body["eta_s"] > 0
    assert api.status(first).json()["queue_position"] == 1

    resp = api.terminate(second)
    assert resp.status_code == 202
    cancelled = api.status(second).json()
    assert cancelled["state"] == "CANCELLED" and cancelled["started_at"] is None

    for task_id in running:
        assert api.terminate(task_id).status_code == 202
    assert api.wait(first)["state"] == "SUCCEEDED"
    for task_id in running:
        assert api.wait(task_id)["state"] == "CANCELLED"
    final = api.status(second).json()
    assert final["state"] == "CANCELLED" and final["started_at"] is None  # never ran


def test_timeout_ends_with_partial_result(api: Api, long_input) -> None:
    # As many pages as a task may have: on a quiet machine 150 pages can finish within 3 s.
    base = long_input["image_urls"][0].split("?")[0]
    pages = [f"{base}?timeout-page={i}" for i in range(MAX_IMAGES)]
    task_id = api.submit_ok({"type": "detect", "input": {"image_urls": pages}, "timeout": 3})
    body = api.wait(task_id, timeout_s=60)
    assert body["state"] == "TIMED_OUT", body["state"]
    assert body["error"]["code"] == "timeout"
    assert 1 <= body["progress"]["done"] < MAX_IMAGES
    assert len(body["result"]["items"]) == body["progress"]["done"]


def test_timeout_above_maximum_is_refused(api: Api, long_input) -> None:
    resp = api.submit({"type": "detect", "input": long_input, "timeout": 10**6})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_timeout"

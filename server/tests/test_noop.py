"""The `noop` job type: a task that runs nothing still goes through queue, worker and record."""

from __future__ import annotations

import pytest

from testkit.stack import Api

pytestmark = pytest.mark.live


def test_noop_task_succeeds_without_input(api: Api) -> None:
    task_id = api.submit_ok({"type": "noop"})
    body = api.wait(task_id)
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": 0, "total": 0, "failed": 0}
    assert body["result"]["items"] == []


def test_detect_still_needs_an_input(api: Api) -> None:
    resp = api.submit({"type": "detect"})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "no_input"

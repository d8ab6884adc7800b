"""Imported models on the live stack (docs/models.md): `models add` of a YOLO checkpoint made
offline, refused files that leave nothing behind, GET /models listing the hosts that loaded it,
a detect task using it without any restart, and `models remove` withdrawing it everywhere."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.keyspace import MODEL_BLOB_PREFIX
from server.tests.conftest import jpeg_bytes
from testkit.stack import Api, Stack, live_workers

pytestmark = pytest.mark.live

NAME = "woodcuts-imported"
IMPORT_TIMEOUT_S = 300  # loads torch, a dry run and an ONNX export: slow on a busy 2-core machine


def eventually(check: Callable[[], Any], timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.5)
    return found


def models_by_name(api: Api) -> dict[str, dict[str, Any]]:
    resp = api.request("GET", "/models")
    assert resp.status_code == 200, resp.text
    return {m["name"]: m for m in resp.json()["models"]}


def import_model(stack: Stack, path: Path, *options: str) -> Any:
    return stack.cli("models", "add", str(path), *options, timeout_s=IMPORT_TIMEOUT_S)


def test_refused_checkpoints_leave_nothing_behind(stack: Stack, checkpoints: dict[str, Path]):
    redis = stack.redis()
    for path, code in (
        (checkpoints["classifier"], "not_a_detector"),
        (checkpoints["truncated"], "not_a_checkpoint"),
        (Path("yolo11n.pt"), "no_such_file"),  # ultralytics would download a file of that name
    ):
        done = import_model(stack, path, "--name", "refused")
        assert done.returncode == 1, done.stderr
        assert f"error: {code}:" in done.stderr
    done = import_model(stack, checkpoints["detector"], "--name", "../escape")
    assert done.returncode == 1 and "invalid_model_name" in done.stderr
    assert json.loads(stack.cli("models", "list", "--json").stdout) == []
    assert redis.keys(MODEL_BLOB_PREFIX + "*") == []


def test_an_imported_model_is_listed_used_by_detect_and_removed(
    stack: Stack, api: Api, checkpoints: dict[str, Path], pages
) -> None:
    done = import_model(stack, checkpoints["detector"], "--name", NAME, "--classes", "figure")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    assert card["classes"] == ["figure"] and card["onnx_sha256"]
    listed = json.loads(stack.cli("models", "list", "--json").stdout)
    assert [c["name"] for c in listed] == [NAME]

    # Every worker process loads it without a restart; GET /models names the hosts that did.
    loaded = eventually(lambda: models_by_name(api)[NAME]["hosts"])
    assert loaded == [stack.settings().worker_name]
    entry = models_by_name(api)[NAME]
    assert entry["sha256"] == card["sha256"] and entry["imported"]

    page = pages[0]
    task = api.upload([("p.jpg", jpeg_bytes(page))], {"model": NAME, "confidence": 0.3})
    assert task.status_code == 202, task.text
    body = api.wait(task.json()["task_id"], timeout_s=180)
    assert body["state"] == "SUCCEEDED", body
    (item,) = body["result"]["items"]
    assert item["detections"] and {d["label"] for d in item["detections"]} == {"figure"}
    assert body["result"]["provenance"]["sha256"] == card["sha256"]

    done = stack.cli("models", "remove", NAME)
    assert done.returncode == 0, done.stderr
    assert NAME not in models_by_name(api)
    refused = api.submit(
        {
            "type": "detect",
            "input": {"image_urls": ["http://x.org/a.jpg"]},
            "params": {"model": NAME},
        }
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_model"
    eventually(lambda: all(NAME not in b.get("models", []) for b in live_workers(stack)))
    assert stack.redis().keys(MODEL_BLOB_PREFIX + "*") == []
    assert stack.cli("models", "remove", NAME).returncode == 1

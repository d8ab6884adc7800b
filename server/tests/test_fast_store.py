"""Fast layer: the task store, the one owner of a task's end, and the HTTP app's validation,
against a bare redis-server — no worker, no gunicorn, no nginx (seconds, not minutes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import redis
from billiard.exceptions import WorkerLostError
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from model import uploads
from model.ending import end_after_failure
from model.store import (
    QUEUE_KEY,
    RUNNING_KEY,
    STATUS_LIST_CAP,
    State,
    TaskStore,
    items_key,
    owner_queue_key,
    task_key,
    tomb_key,
)

TTL_S = 3600


@pytest.fixture
def store(clean_redis: redis.Redis) -> TaskStore:
    return TaskStore(clean_redis, TTL_S, 7200)


def _task(store: TaskStore, owner: str = "alice", timeout_s: float = 60) -> str:
    return store.create(owner, "detect", {"inputs": []}, 1, timeout_s).id


# --- the store's transitions -------------------------------------------------------------------


def test_running_task_leaves_every_queue_index_in_one_step(store: TaskStore) -> None:
    task_id = _task(store)
    assert store.mark_running(task_id, 123)
    r = store.redis
    assert r.zscore(QUEUE_KEY, task_id) is None
    assert r.zscore(owner_queue_key("alice"), task_id) is None
    assert r.sismember(RUNNING_KEY, task_id)
    record = store.get(task_id)
    assert record.state == State.RUNNING and record.worker_pid == 123 and record.started_at
    assert store.mark_running(task_id, 456)  # redelivered after a crash: RUNNING again
    assert store.get(task_id).started_at == record.started_at


def test_finish_once_starts_expiry_and_tombstone_together(store: TaskStore) -> None:
    task_id = _task(store)
    store.mark_running(task_id, 1)
    store.add_item(task_id, {"index": 0}, failed=False)
    assert store.finish(task_id, State.SUCCEEDED)
    assert not store.finish(task_id, State.FAILED, ("x", "y"))  # only the first end counts
    r = store.redis
    assert 0 < r.ttl(task_key(task_id)) <= TTL_S + 1
    assert 0 < r.ttl(items_key(task_id)) <= TTL_S + 1
    assert r.get(tomb_key(task_id)) == "alice" and r.ttl(tomb_key(task_id)) > TTL_S
    assert not r.sismember(RUNNING_KEY, task_id)
    assert store.get(task_id).state == State.SUCCEEDED
    assert store.mean_duration_s("detect") is not None
    assert store.mean_duration_s("noop") is None  # per job type


def test_finish_respects_allowed_states(store: TaskStore) -> None:
    task_id = _task(store)
    store.mark_running(task_id, 1)
    assert not store.finish(task_id, State.CANCELLED, only_from=[State.QUEUED])
    assert store.get(task_id).state == State.RUNNING
    assert store.redis.ttl(task_key(task_id)) == -1  # still active: no expiry


# --- one owner for a task's end: whatever escapes the job -------------------------------------


@pytest.mark.parametrize(
    ("exception", "state", "code"),
    [
        (SoftTimeLimitExceeded(), State.TIMED_OUT, "timeout"),
        (TimeLimitExceeded(1.0), State.TIMED_OUT, "timeout"),
        (RuntimeError("boom"), State.FAILED, "internal_error"),
    ],
)
@pytest.mark.parametrize("started", [False, True])
def test_an_exception_escaping_the_job_ends_its_task(
    store: TaskStore, tmp_path: Path, exception, state: State, code: str, started: bool
) -> None:
    """A soft limit can fire before the runner's handlers (even before the task is marked
    RUNNING): the message is acknowledged then, so the record must end too."""
    task_id = _task(store)
    uploads.save(tmp_path, task_id, 0, ".jpg", b"x")
    if started:
        store.mark_running(task_id, 1)
    assert end_after_failure(store, tmp_path, task_id, exception) == state
    record = store.get(task_id)
    assert record.state == state and record.error_code == code
    assert store.redis.ttl(task_key(task_id)) > 0
    assert store.queued_count("alice") == 0 and store.queued_count() == 0
    assert not uploads.task_dir(tmp_path, task_id).exists()


def test_a_lost_worker_process_leaves_the_task_to_its_redelivery(
    store: TaskStore, tmp_path: Path
) -> None:
    task_id = _task(store)
    store.mark_running(task_id, 1)
    assert end_after_failure(store, tmp_path, task_id, WorkerLostError()) is None
    assert store.get(task_id).state == State.RUNNING


# --- small statuses, lists read page by page ----------------------------------------------------


def test_status_provenance_is_summarised_and_result_keeps_everything(store: TaskStore) -> None:
    task_id = _task(store)
    skipped = [{"canvas": f"c{i}", "reason": "no image"} for i in range(5000)]
    store.set_provenance(task_id, {"model": "m", "manifests": [{"index": 0, "skipped": skipped}]})
    record = store.get(task_id)
    summary = record.provenance["manifests"][0]
    assert len(summary["skipped"]) == STATUS_LIST_CAP
    assert summary["skipped_count"] == 5000
    assert len(json.dumps(record.provenance)) < 20_000
    assert store.full_provenance(record)["manifests"][0]["skipped"] == skipped
    store.set_provenance(task_id, {"model": "m", "manifests": [{"index": 0, "skipped": []}]})
    assert store.full_provenance(store.get(task_id))["manifests"][0]["skipped"] == []


def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.parametrize("state", [None, State.QUEUED])
def test_listing_reads_only_the_records_of_its_page(store: TaskStore, state) -> None:
    for _ in range(60):
        _task(store)
    store.redis.config_resetstat()
    page, total = store.list("alice", state, offset=10, limit=1)
    assert total == 60 and len(page) == 1
    assert _calls(store.redis, "hgetall") == 1  # not one per task of the owner


def test_listing_pages_are_newest_first_and_filtered(store: TaskStore) -> None:
    ids = [_task(store) for _ in range(5)]
    store.mark_running(ids[1], 1)
    assert [r.id for r in store.list("alice", None, 0, 2)[0]] == ids[::-1][:2]
    running, total = store.list("alice", State.RUNNING, 0, 10)
    assert total == 1 and running[0].id == ids[1]
    assert store.list("bob", None, 0, 10) == ([], 0)


# --- the HTTP app alone: validation and error shapes ---------------------------------------------


@pytest.mark.parametrize("timeout", [1e-9, 1e-4, 1e-3, 0.5, 0, -1])
def test_tiny_timeouts_are_refused(app_client, timeout: float) -> None:
    resp = app_client.post("/task", json={"type": "noop", "timeout": timeout})
    assert resp.status_code == 422
    assert resp.json["error"]["details"][0]["loc"] == "timeout"
    form = _multipart(app_client, {"type": "detect", "timeout": str(timeout)})
    assert form.status_code == 422


@pytest.mark.parametrize("field", ["params", "input"])
def test_deep_json_in_a_multipart_field_is_a_400(app_client, field: str) -> None:
    for depth in (40, 1000, 100_000):
        resp = _multipart(app_client, {"type": "detect", field: "[" * depth + "]" * depth})
        assert resp.status_code == 400, (depth, resp.data[:200])
        assert resp.json["error"]["code"] in ("too_deep", "malformed_json")


def test_empty_multipart_fields_are_refused(app_client) -> None:
    assert _multipart(app_client, {"type": "detect", "timeout": ""}).status_code == 422
    resp = _multipart(app_client, {"type": "detect", "manifest": ""})
    assert resp.status_code == 422 and "file part" in resp.json["error"]["message"]


@pytest.mark.parametrize(
    "url", ["http://example.org:99999/a.jpg", "http://example.org:-1/a", "https://h:1e3/x"]
)
def test_a_port_out_of_range_is_refused_at_submit(app_client, url: str) -> None:
    for body in (
        {"type": "detect", "input": {"image_urls": [url]}},
        {"type": "detect", "input": {"manifest_url": url}},
        {"type": "similarity", "input": {"documents": {"a": url, "b": "http://example.org/m"}}},
    ):
        resp = app_client.post("/task", json=body)
        assert resp.status_code == 422, resp.json
        assert "port" in resp.json["error"]["message"] or "URL" in resp.json["error"]["message"]


def test_an_idempotency_key_reused_for_another_request_is_a_422(app_client) -> None:
    headers = {"Idempotency-Key": "order-1"}
    first = app_client.post("/task", json={"type": "noop"}, headers=headers)
    again = app_client.post("/task", json={"type": "noop"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json["task_id"] == again.json["task_id"]
    other = app_client.post("/task", json={"type": "noop", "timeout": 5}, headers=headers)
    assert other.status_code == 422
    assert other.json["error"]["code"] == "idempotency_key_reused"

    def upload(data: bytes) -> object:
        files = {"images": (io.BytesIO(data), "p.png")}
        return app_client.post(
            "/task", data={"type": "detect", **files}, headers={"Idempotency-Key": "up-1"}
        )

    png = _png()
    assert upload(png).status_code == 202
    assert upload(png).status_code == 202
    assert upload(png + b"\0").status_code == 422  # same fields, other bytes


def test_request_schemas_have_distinct_names(app_client) -> None:
    schemas = app_client.get("/openapi/openapi.json").json["components"]["schemas"]
    assert {"DetectParams", "DetectInput", "SimilarityParams", "SimilarityInput"} <= set(schemas)
    assert "image_urls" in schemas["DetectInput"]["properties"]
    assert "documents" in schemas["SimilarityInput"]["properties"]
    assert "Input" not in schemas and "Params" not in schemas


def _multipart(client, data: dict, **kwargs: object):
    return client.post("/task", data=data, content_type="multipart/form-data", **kwargs)


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_multipart_is_for_detect_only(app_client) -> None:
    for job_type in ("noop", "similarity"):
        resp = _multipart(app_client, {"type": job_type})
        assert resp.status_code == 415, resp.json
        assert "application/json" in resp.json["error"]["message"]


def test_noop_takes_no_params(app_client) -> None:
    resp = app_client.post("/task", json={"type": "noop", "params": {"confidence": 0.5}})
    assert resp.status_code == 422
    assert app_client.post("/task", json={"type": "noop", "params": {}}).status_code == 202

"""Fast layer: the task store, the one owner of a task's end, and the HTTP app's validation,
against a bare redis-server — no worker, no gunicorn, no nginx (seconds, not minutes)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import redis
from billiard.exceptions import WorkerLostError
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from model.jobs.contract import ImageUpload, ManifestUpload, TaskSpec
from model.keyspace import (
    QUEUE_KEY,
    RUNNING_KEY,
    UNSENT_KEY,
    detail_key,
    items_key,
    lease_key,
    owner_queue_key,
    owner_tasks_key,
    stored_key,
    task_key,
    tomb_key,
)
from model.lifecycle.ending import end_after_failure, end_task
from model.lifecycle.housekeeping import purge_orphan_uploads
from model.tasks.record import (
    DETAIL_LIST_CAP,
    DETAIL_PROVENANCE_BYTES,
    RECORD_PROVENANCE_BYTES,
    STATUS_LIST_CAP,
)
from model.tasks.states import DEFERRED, State
from model.tasks.store import AlreadyClaimed, TaskStore
from model.uploads import UploadMissing, UploadStore, key_for


@pytest.fixture
def uploads(clean_redis: redis.Redis, tmp_path: Path) -> UploadStore:
    """Binary-safe, on the same Redis; legacy folders under tmp_path."""
    port = clean_redis.connection_pool.connection_kwargs["port"]
    return UploadStore(redis.Redis(port=port), tmp_path)


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
    assert not store.mark_running(task_id, 456)  # a duplicate delivery: attempt 1 is alive
    store.redis.delete(lease_key(task_id))  # attempt 1 died and its lease lapsed
    assert store.mark_running(task_id, 456)  # redelivered after a crash: RUNNING again
    again = store.get(task_id)
    assert again.started_at == record.started_at and again.attempt == 2


def test_an_item_written_twice_is_stored_once(store: TaskStore) -> None:
    """A write retried after its reply was lost (Redis restarting) must not count twice."""
    task_id = _task(store)
    token = store.mark_running(task_id, 1)
    for _ in range(2):
        assert store.add_item(task_id, {"index": 0, "status": "ok"}, failed=False, holder=token)
    assert store.add_item(task_id, {"index": 1, "status": "failed"}, failed=True, holder=token)
    record = store.get(task_id)
    assert [i["index"] for i in store.items(task_id)] == [0, 1]
    assert (record.done, record.failed) == (1, 1)
    assert store.finish(task_id, State.SUCCEEDED, holder=token)
    assert not store.redis.exists(stored_key(task_id))  # only needed while it runs


def test_a_start_requeue_or_end_retried_after_its_reply_was_lost_still_counts(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's clients retry a call whose connection dropped; the call may have run. The
    same call again says it did (a start that answered no would drop the task's message; a
    requeue, leave it QUEUED with none; an end, keep its uploads and its webhook)."""
    task_id = _task(store)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)  # one call, sent twice
    token = store.mark_running(task_id, 1, "w:1:2")
    assert store.mark_running(task_id, 1, "w:1:2") == token == "w:1:2:1"
    assert store.mark_running(task_id, 1, "w:1:3") is None  # another process: a duplicate
    assert store.requeue(task_id, token, token)
    assert store.requeue(task_id, token, token)
    record = store.get(task_id)
    assert (record.state, store.redis.hget(task_key(task_id), "requeues")) == (State.QUEUED, "1")
    token = store.mark_running(task_id, 1)
    assert store.finish(task_id, State.SUCCEEDED, holder=token)
    assert store.finish(task_id, State.SUCCEEDED, holder=token)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_001.5)  # another call: too late
    assert not store.finish(task_id, State.FAILED, ("x", "y"))
    assert store.get(task_id).state == State.SUCCEEDED


def test_an_idempotency_key_is_bound_as_its_task_is_created_never_before(
    store: TaskStore,
) -> None:
    """One step: a key never names a task that does not exist (the API process could die
    between the two), and a second create with the key creates nothing."""
    first = store.create("alice", "detect", {}, 1, 60, idempotency=("k-1", "fp-a"))
    with pytest.raises(AlreadyClaimed) as claimed:
        store.create("alice", "detect", {}, 1, 60, idempotency=("k-1", "fp-b"))
    assert (claimed.value.task_id, claimed.value.fingerprint) == (first.id, "fp-a")
    assert store.idempotent_task("alice", "k-1") == (first.id, "fp-a")
    assert store.queued_count("alice") == 1
    other = store.create("bob", "detect", {}, 1, 60, idempotency=("k-1", "fp-a"))  # per owner
    assert other.id != first.id
    assert store.queued_counts("alice") == (2, 1)  # all queued, alice's (one round trip)


def test_finish_once_starts_expiry_and_tombstone_together(store: TaskStore) -> None:
    task_id = _task(store)
    store.mark_running(task_id, 1)
    store.add_item(task_id, {"index": 0}, failed=False)
    assert store.finish(task_id, State.SUCCEEDED)
    assert not store.finish(task_id, State.FAILED, ("x", "y"))  # only the first end counts
    r, ttl_s = store.redis, store.result_ttl_s
    assert 0 < r.ttl(task_key(task_id)) <= ttl_s + 1
    assert 0 < r.ttl(items_key(task_id)) <= ttl_s + 1
    assert r.get(tomb_key(task_id)) == "alice" and r.ttl(tomb_key(task_id)) > ttl_s
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
    store: TaskStore, uploads: UploadStore, exception, state: State, code: str, started: bool
) -> None:
    """A soft limit can fire before the runner's handlers (even before the task is marked
    RUNNING): the message is acknowledged then, so the record must end too."""
    task_id = _task_with_uploads(store, uploads, [b"x"])
    if started:
        store.mark_running(task_id, 1)
    assert end_after_failure(store, uploads, task_id, exception) == state
    record = store.get(task_id)
    assert record.state == state and record.error_code == code
    assert store.redis.ttl(task_key(task_id)) > 0
    assert store.queued_count("alice") == 0 and store.queued_count() == 0
    assert not uploads.stored()


def test_a_lost_worker_process_leaves_the_task_to_its_redelivery(
    store: TaskStore, uploads: UploadStore
) -> None:
    task_id = _task(store)
    store.mark_running(task_id, 1)
    assert end_after_failure(store, uploads, task_id, WorkerLostError()) is None
    assert store.get(task_id).state == State.RUNNING


# --- uploads: in Redis, binary-safe, bounded in time, deleted by the task's end ---------------


def _task_with_uploads(
    store: TaskStore, uploads: UploadStore, files: list[bytes], ttl_s: int = 600, task_id="a" * 32
) -> str:
    """Saved as the API does: files first, then the record that names them."""
    uploads.save(task_id, files, ttl_s)
    entries = [ImageUpload(key=key_for(task_id, i), filename=f"{i}.jpg") for i in range(len(files))]
    spec = TaskSpec(inputs=entries).model_dump()
    return store.create("alice", "detect", spec, len(files), 60, task_id).id


def test_uploads_are_bytes_as_sent_with_a_bounded_lifetime(store, uploads) -> None:
    data = bytes(range(256)) * 64  # no text encoding survives this
    task_id = _task_with_uploads(store, uploads, [data, b"\xff\xd8"], ttl_s=600)
    spec = TaskSpec.model_validate(store.spec_of(task_id))
    assert uploads.read(spec.inputs[0]) == data
    assert 590 < uploads.redis.ttl(key_for(task_id, 1)) <= 600
    uploads.refresh(spec, 5000)  # a worker starts the task
    assert 4990 < uploads.redis.ttl(key_for(task_id, 0)) <= 5000
    assert end_task(store, uploads, task_id, State.CANCELLED)
    assert not uploads.stored()
    with pytest.raises(UploadMissing):
        uploads.read(spec.inputs[0])


def test_uploads_of_an_older_release_are_read_and_deleted_from_disk(store, uploads) -> None:
    task_id = "b" * 32
    folder = uploads.legacy_root / task_id
    folder.mkdir()
    (folder / "00000.json").write_bytes(b"{}")
    entry = ManifestUpload(path=str(folder / "00000.json"), filename="m.json")
    store.create("alice", "detect", TaskSpec(inputs=[entry]).model_dump(), 0, 60, task_id)
    assert uploads.read(entry) == b"{}"
    assert end_task(store, uploads, task_id, State.CANCELLED)
    assert not folder.exists()


def test_orphaned_uploads_are_purged_from_redis_and_disk(store, uploads) -> None:
    ended = _task_with_uploads(store, uploads, [b"x", b"y"])
    store.finish(ended, State.CANCELLED)  # ended without deleting them (a crash in between)
    uploads.save("c" * 32, [b"z"], 600)  # no record: a submit in progress, or one that died
    folder = uploads.legacy_root / ("d" * 32)
    folder.mkdir()
    assert purge_orphan_uploads(store, uploads, min_age_s=1) == []  # everything is fresh
    time.sleep(1.1)
    live = _task_with_uploads(store, uploads, [b"w"], task_id="e" * 32)  # queued: not an orphan
    removed = purge_orphan_uploads(store, uploads, now=time.time() + 2, min_age_s=1)
    assert sorted(removed) == [ended, "c" * 32, "d" * 32]
    assert list(uploads.stored()) == [live] and not folder.exists()


def test_uploads_of_a_live_task_are_never_orphans(store, uploads) -> None:
    task_id = _task_with_uploads(store, uploads, [b"x"])
    time.sleep(1.1)
    assert purge_orphan_uploads(store, uploads, min_age_s=0) == []
    assert list(uploads.stored()) == [task_id]


# --- small statuses, lists read page by page ----------------------------------------------------


def test_status_provenance_is_summarised_and_result_keeps_a_bounded_list(
    store: TaskStore,
) -> None:
    task_id = _task(store)
    skipped = [{"canvas": f"c{i}", "reason": "no image"} for i in range(5000)]
    store.set_provenance(task_id, {"model": "m", "manifests": [{"index": 0, "skipped": skipped}]})
    record = store.get(task_id)
    summary = record.provenance["manifests"][0]
    assert len(summary["skipped"]) == STATUS_LIST_CAP
    assert summary["skipped_count"] == 5000
    assert len(json.dumps(record.provenance)) < 20_000
    detail = store.full_provenance(record)["manifests"][0]
    assert detail["skipped"] == skipped[:DETAIL_LIST_CAP] and detail["skipped_count"] == 5000
    store.set_provenance(task_id, {"model": "m", "manifests": [{"index": 0, "skipped": []}]})
    assert store.full_provenance(store.get(task_id))["manifests"][0]["skipped"] == []


def test_a_tasks_provenance_has_a_byte_budget_whatever_its_lists_hold(
    store: TaskStore,
) -> None:
    """Before: a 198-byte request naming 5 manifests of 100,000 canvases stored a 67 MB
    detail beside its record. Whatever a job puts in its provenance, the record's copy and
    the one beside it stay within RECORD_PROVENANCE_BYTES and DETAIL_PROVENANCE_BYTES."""
    task_id = _task(store)
    label = "x" * 2000  # entries as big as a manifest may make them
    manifests = [
        {"index": m, "label": label, "skipped": [{"canvas": f"c{m}", "label": label}] * 5000}
        for m in range(5)
    ]
    store.set_provenance(task_id, {"model": "m", "manifests": manifests, "note": label})
    record_bytes = len(store.redis.hget(task_key(task_id), "provenance"))
    detail_bytes = store.redis.strlen(detail_key(task_id))
    print(f"provenance stored: record {record_bytes} B, detail {detail_bytes} B")
    assert record_bytes <= RECORD_PROVENANCE_BYTES and detail_bytes <= DETAIL_PROVENANCE_BYTES
    record = store.get(task_id)
    assert record.provenance["model"] == "m" and record.provenance["manifests"][0]["skipped"]
    assert record.provenance["manifests"][0]["skipped_count"] == 5000
    full = store.full_provenance(record)
    assert full["manifests"][4]["skipped_count"] == 5000
    # A scalar too big for any budget leaves the marker alone.
    store.set_provenance(task_id, {"model": "m", "huge": "y" * 2 * DETAIL_PROVENANCE_BYTES})
    assert store.get(task_id).provenance == {"truncated": True}


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


def test_uploads_go_to_redis_not_to_the_api_hosts_disk(app_client, clean_redis, tmp_path) -> None:
    png = _png()
    files = {"images": [(io.BytesIO(png), "a.png"), (io.BytesIO(png), "b.png")]}
    resp = _multipart(app_client, {"type": "detect", **files})
    assert resp.status_code == 202, resp.json
    task_id = resp.json["task_id"]
    spec = TaskSpec.model_validate(json.loads(clean_redis.hget(task_key(task_id), "spec")))
    assert [entry.key for entry in spec.inputs] == [key_for(task_id, 0), key_for(task_id, 1)]
    binary = redis.Redis(port=clean_redis.connection_pool.connection_kwargs["port"])
    assert binary.get(key_for(task_id, 1)) == png
    assert not (tmp_path / "uploads").exists()


def test_a_tasks_uploads_are_capped(clean_redis, tmp_path) -> None:
    from model.api.app import create_app
    from model.keys import KeyStore
    from model.settings import Settings

    port = clean_redis.connection_pool.connection_kwargs["port"]
    settings = Settings(
        data_dir=tmp_path, redis={"port": port}, uploads={"max_total_bytes": 2 * len(_png())}
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_X_API_KEY"] = KeyStore(settings.keys_db).create("fast")

    def images(count: int) -> list:
        return [(io.BytesIO(_png()), f"{i}.png") for i in range(count)]

    resp = _multipart(client, {"type": "detect", "images": images(3)})
    assert resp.status_code == 413 and resp.json["error"]["code"] == "uploads_too_large"
    assert not clean_redis.keys("sc:upload:*")
    assert _multipart(client, {"type": "detect", "images": images(2)}).status_code == 202


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"model": "illustrations-demo"}, "wrong_model_task"),  # a detector, not an extractor
        ({"detector": "illustrations-demo-backbone"}, "wrong_model_task"),
        ({"model": "nope"}, "unknown_model"),
    ],
)
def test_a_model_of_the_wrong_task_is_a_422(app_client, params: dict, code: str) -> None:
    documents = {"a": "http://127.0.0.1/a.json", "b": "http://127.0.0.1/b.json"}
    body = {"type": "similarity", "input": {"documents": documents}, "params": params}
    resp = app_client.post("/task", json=body)
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["code"] == code


def test_expired_tasks_are_not_counted_or_listed(store: TaskStore) -> None:
    ids = [_task(store) for _ in range(3)]
    store.redis.delete(task_key(ids[1]))  # its record expired; the index still names it
    page, total = store.list("alice", None, 0, 10)
    assert total == 2 and [r.id for r in page] == [ids[2], ids[0]]
    assert store.redis.zcard(owner_tasks_key("alice")) == 2  # pruned on the way


def test_a_key_at_its_running_cap_waits_and_is_sent_again_when_a_slot_frees(
    store: TaskStore, clean_redis: redis.Redis
) -> None:
    """One key may run `running_max` tasks at once (keys create --max-running, else
    worker.key_running_max): a worker that takes another leaves it QUEUED, deferred (its
    message dropped, sent again when a task ends or by the reaper as unsent)."""
    first, second = (store.create("a", "noop", {}, 0, 60, running_max=1) for _ in range(2))
    other = store.create("b", "noop", {}, 0, 60, running_max=1)
    uncapped = [store.create("c", "noop", {}, 0, 60) for _ in range(2)]
    assert store.mark_running(first.id, 1, "w:1:1")
    assert store.mark_running(second.id, 2, "w:1:2") == DEFERRED
    assert store.get(second.id).state == State.QUEUED
    assert clean_redis.zscore(UNSENT_KEY, second.id) is not None  # the reaper's fallback
    assert store.mark_running(other.id, 3, "w:1:3") not in (None, DEFERRED)  # another key runs
    assert all(store.mark_running(t.id, 4, "w:1:4") not in (None, DEFERRED) for t in uncapped)
    assert store.pop_deferred() == second.id and store.pop_deferred() is None
    assert store.mark_running(second.id, 2, "w:1:2") == DEFERRED  # still at its cap
    assert store.finish(first.id, State.SUCCEEDED)
    token = store.mark_running(second.id, 2, "w:1:2")
    assert token not in (None, DEFERRED) and store.get(second.id).state == State.RUNNING
    assert store.pop_deferred() is None  # out of the deferred set once it runs

"""Fast layer of the scale-out: routing by model, the fleet of live workers as the API reads it,
queue positions per queue — against a bare redis-server (the live two-host tests are in
test_scale_out.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from model.celery_app import MODEL_QUEUE_PREFIX, QUEUE, queue_for, worker_queues
from model.jobs.cluster import DEFAULT_EMBED_MODEL
from model.keyspace import lease_key
from model.settings import Settings
from model.tasks import fleet
from model.tasks.eta import start_in_s, time_left_s
from model.tasks.fairness import waiting_messages
from model.tasks.states import State
from model.tasks.store import TaskStore
from model.uploads import UploadStore

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights"
OTHER = "illustrations-other"  # a model only some (fake) worker has


def _beat(name: str, models: list[str], queues: list[str], device: str = "cpu") -> dict:
    return {
        "name": name,
        "pid": 1,
        "slots": 1,
        "queues": queues,
        "models": models,
        "model_info": [
            {
                "name": m,
                "task": "detect",
                "classes": ["illustration"],
                "input_size": 416,
                "sha256": "0" * 64,
                "default": False,
                "backends": ["onnx"],
            }
            for m in models
        ],
        "devices": {m: device for m in models},
        "started_at": 0,
    }


def _publish_fleet(r: redis.Redis) -> None:
    """Two hosts: both have the default model, host-b also OTHER (on a GPU)."""
    default = Settings().models.default
    fleet.publish(r, "sc:worker:host-a:1", _beat("host-a", [default], [QUEUE]), 20)
    queues = [QUEUE, MODEL_QUEUE_PREFIX + OTHER]
    fleet.publish(r, "sc:worker:host-b:1", _beat("host-b", [default, OTHER], queues, "cuda:0"), 20)


# --- routing ------------------------------------------------------------------------------------


def test_a_task_naming_a_model_goes_to_its_queue_default_models_to_the_default_one() -> None:
    settings = Settings()
    assert queue_for(settings, [None]) == QUEUE
    assert queue_for(settings, [settings.models.default]) == QUEUE
    assert queue_for(settings, [None, settings.similarity.embed_model]) == QUEUE
    assert queue_for(settings, [OTHER]) == f"scriptorium.model.{OTHER}"
    assert (
        queue_for(settings, [settings.similarity.embed_model, OTHER]) == MODEL_QUEUE_PREFIX + OTHER
    )
    names = [settings.models.default, settings.similarity.embed_model, OTHER]
    assert worker_queues(settings, names) == [QUEUE, MODEL_QUEUE_PREFIX + OTHER]


def test_submit_routes_by_the_named_model_of_a_live_worker(app_client, clean_redis) -> None:
    """The API host's disk need not have the model: a live worker advertising it is enough."""
    resp = app_client.post("/task", json={"type": "detect", "params": {"model": OTHER}})
    assert resp.status_code == 422 and resp.json["error"]["code"] == "unknown_model"
    _publish_fleet(clean_redis)
    body = {"type": "detect", "input": {"image_urls": ["https://example.org/p.jpg"]}}
    named = app_client.post("/task", json={**body, "params": {"model": OTHER}}).json["task_id"]
    plain = app_client.post("/task", json=body).json["task_id"]
    assert clean_redis.hget(f"sc:task:{named}", "queue") == MODEL_QUEUE_PREFIX + OTHER
    assert clean_redis.hget(f"sc:task:{plain}", "queue") == QUEUE
    # The Celery messages wait in the lists the workers having those models take.
    assert waiting_messages(clean_redis, MODEL_QUEUE_PREFIX + OTHER) == 1
    assert waiting_messages(clean_redis, QUEUE) == 1


def test_a_jobs_own_default_model_is_checked_and_routed_as_if_named(
    make_app, clean_redis, tmp_path: Path
) -> None:
    """A cluster task naming no feature extractor runs motif-embed (the job's own default, not
    one of the service's): it goes to that model's queue, as one naming it does, and a service
    where no host has it refuses both at submit (not FAILED model_unavailable at run time)."""
    embed = DEFAULT_EMBED_MODEL
    body = {"type": "cluster", "input": {"image_urls": ["https://example.org/a.jpg"] * 2}}
    client = make_app()
    client.environ_base["HTTP_X_API_KEY"] = client.keys.create("fast")
    named = client.post("/task", json={**body, "params": {"model": embed}})
    plain = client.post("/task", json=body)
    assert (named.status_code, plain.status_code) == (202, 202), (named.json, plain.json)
    for resp in (named, plain):
        assert clean_redis.hget(f"sc:task:{resp.json['task_id']}", "queue") == (
            MODEL_QUEUE_PREFIX + embed
        )
    # A detector the request names routes before the job's own default: its hosts have it
    team = tmp_path / "team"
    team.mkdir()
    card = json.loads((WEIGHTS / "illustrations-demo.json").read_text())
    (team / "team-detector.json").write_text(json.dumps({**card, "name": "team-detector"}))
    for weights in (card["weights"], card["onnx"]):
        (team / weights).symlink_to(WEIGHTS / weights)
    teamed = make_app(models={"dirs": [str(WEIGHTS), str(team)]})
    teamed.environ_base["HTTP_X_API_KEY"] = teamed.keys.create("team")
    resp = teamed.post("/task", json={**body, "params": {"detector": "team-detector"}})
    assert resp.status_code == 202, resp.json
    queue = clean_redis.hget(f"sc:task:{resp.json['task_id']}", "queue")
    assert queue == MODEL_QUEUE_PREFIX + "team-detector"
    (tmp_path / "models").mkdir()
    lacking = make_app(models={"dirs": [str(tmp_path / "models")]})
    lacking.environ_base["HTTP_X_API_KEY"] = lacking.keys.create("other")
    for params in ({"model": embed}, {}):
        resp = lacking.post("/task", json={**body, "params": params})
        assert resp.status_code == 422, resp.json
        assert (
            resp.json["error"]["code"] == "unknown_model" and embed in resp.json["error"]["message"]
        )


# --- the fleet as the API reads it ------------------------------------------------------------


def test_models_and_readiness_aggregate_every_live_worker(app_client, clean_redis) -> None:
    assert app_client.get("/readyz").status_code == 503
    _publish_fleet(clean_redis)
    fleet.publish(clean_redis, "sc:worker:gone:1", _beat("gone", [OTHER], [QUEUE]), 20)
    clean_redis.zadd(fleet.WORKERS_INDEX, {"sc:worker:gone:1": 1})  # lapsed long ago
    models = {m["name"]: m for m in app_client.get("/models").json["models"]}
    default = Settings().models.default
    assert models[OTHER]["workers"] == 1 and models[OTHER]["hosts"] == ["host-b"]
    assert models[OTHER]["devices"] == ["cuda:0"] and not models[OTHER]["default"]
    assert models[default]["workers"] == 2 and models[default]["default"]
    ready = app_client.get("/readyz")
    assert ready.status_code == 200
    assert sorted(w["name"] for w in ready.json["workers"]) == ["host-a", "host-b"]
    assert ready.json["queues"][QUEUE] == {"queued": 0, "workers": 2}
    assert ready.json["queues"][MODEL_QUEUE_PREFIX + OTHER] == {"queued": 0, "workers": 1}
    # Tasks for a model whose hosts are all down wait, and /readyz says so.
    body = {"type": "detect", "input": {"image_urls": ["https://example.org/p.jpg"]}}
    assert app_client.post("/task", json={**body, "params": {"model": OTHER}}).status_code == 202
    fleet.withdraw(clean_redis, "sc:worker:host-b:1")
    orphaned = app_client.get("/readyz").json["queues"][MODEL_QUEUE_PREFIX + OTHER]
    assert orphaned == {"queued": 1, "workers": 0}


def test_readiness_needs_a_worker_with_the_default_model(app_client, clean_redis) -> None:
    fleet.publish(clean_redis, "sc:worker:b:1", _beat("b", [OTHER], [QUEUE]), 20)
    resp = app_client.get("/readyz")
    assert resp.status_code == 503 and "default model" in resp.json["error"]["message"]


# --- queue positions and ETAs per queue ---------------------------------------------------------


def test_queue_positions_count_only_the_tasks_of_the_same_queue(store: TaskStore) -> None:
    other = MODEL_QUEUE_PREFIX + OTHER
    first = store.create("alice", "detect", {}, 1, 60, queue=QUEUE)
    routed = store.create("alice", "detect", {}, 1, 60, queue=other)
    second = store.create("bob", "detect", {}, 1, 60, queue=QUEUE)
    assert [store.queue_position(r) for r in (first, routed, second)] == [0, 0, 1]
    store.mark_running(first.id, 1)
    assert store.queue_position(store.get(second.id)) == 0
    assert store.queue_position(store.get(routed.id)) == 0
    store.finish(routed.id, State.CANCELLED)
    assert store.redis.zcard(f"sc:queue:{other}:queued") == 0
    assert store.queued_count() == 1  # backpressure still counts every queue


def test_eta_divides_by_the_workers_taking_the_tasks_queue(app_client, clean_redis) -> None:
    _publish_fleet(clean_redis)
    clean_redis.lpush("sc:durations:detect", 10)
    body = {"type": "detect", "input": {"image_urls": ["https://example.org/p.jpg"]}}
    plain = [app_client.post("/task", json=body).json["task_id"] for _ in range(2)]
    routed = app_client.post("/task", json={**body, "params": {"model": OTHER}}).json["task_id"]
    status = app_client.get(f"/status/{plain[1]}").json
    assert (status["queue_position"], status["eta_s"]) == (2, 10.0)  # 2 x 10 s over 2 workers
    status = app_client.get(f"/status/{routed}").json
    assert (status["queue_position"], status["eta_s"]) == (1, 10.0)  # 1 x 10 s over 1 worker


def test_eta_knows_a_running_task_is_stuck_on_a_trickling_host(
    app_client, clean_redis, store: TaskStore
) -> None:
    """The issue's case: a task 1 page of 50 in after 100 s holds the only worker of the
    queue for ~80 min more; the ETA said the mean duration (10 s) before."""
    fleet.publish(
        clean_redis, "sc:worker:host-a:1", _beat("host-a", [Settings().models.default], [QUEUE]), 20
    )
    clean_redis.lpush("sc:durations:detect", 10)
    body = {"type": "detect", "input": {"image_urls": ["https://example.org/p.jpg"]}}
    stuck = app_client.post("/task", json=body).json["task_id"]
    assert store.mark_running(stuck, 1, "host-a:1:2")
    clean_redis.hset(
        f"sc:task:{stuck}",
        mapping={"done": 1, "total": 50, "attempt_started_at": time.time() - 100},
    )
    waiting = app_client.post("/task", json=body).json["task_id"]
    status = app_client.get(f"/status/{waiting}").json
    assert status["queue_position"] == 1
    assert 4800 <= status["eta_s"] <= 5000, status["eta_s"]  # 100 s x 49 pages to go


def test_eta_start_times_fill_the_first_free_slot() -> None:
    assert start_in_s(1, 2, [], 10) == 0  # a free slot: now
    assert start_in_s(1, 2, [30, 5], 10) == 5
    assert start_in_s(3, 2, [30, 5], 10) == 25  # 5 + 10 + 10 (the other is busy until 30)
    assert start_in_s(1, 1, [30, 5], 10) == 5  # more running than live slots: the soonest
    assert time_left_s(10, 50, 20, 99) == 80  # its own pace: 2 s a page, 40 to go
    assert time_left_s(0, 50, 4, 10) == 6  # no page yet: the mean, less what it has run
    assert time_left_s(50, 50, 20, 10) == 0


# --- attempts: a dead worker's task comes back, a stale attempt can neither emit nor finish -----


class _Celery:
    """Records the messages the reaper sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_task(self, name: str, **options) -> None:
        self.sent.append({"name": name, **options})


def _settings(grace_s: float = 45) -> Settings:
    return Settings(worker={"name": "host-a", "lost_grace_s": grace_s})


def _running(store: TaskStore, holder: str = "host-b:10:11", queue: str = QUEUE) -> str:
    task_id = store.create("alice", "detect", {}, 3, 60, queue=queue).id
    assert store.mark_running(task_id, 11, holder, 45_000) == f"{holder}:1"
    return task_id


def _sweep(store: TaskStore, celery: _Celery, ended: list | None = None, now: float = 0) -> list:
    from model.lifecycle.attempts import requeue_lost

    ended = ended if ended is not None else []
    return requeue_lost(store, celery, _settings(), ended.append, now or time.time())


def test_a_task_whose_lease_lapsed_is_requeued_once_with_its_message(store: TaskStore) -> None:
    other = MODEL_QUEUE_PREFIX + OTHER
    task_id = _running(store, queue=other)
    celery = _Celery()
    assert _sweep(store, celery) == []  # its worker renews the lease: alive
    store.redis.delete(lease_key(task_id))  # ...until it stops for longer than the grace
    assert _sweep(store, celery) == [task_id]
    record = store.get(task_id)
    assert (record.state, record.holder, record.attempt) == (State.QUEUED, None, 1)
    assert store.queue_position(record) == 0 and store.queued_count("alice") == 1
    assert store.running_ids() == []
    assert celery.sent == [
        {
            "name": "scriptorium.run_job",
            "args": [task_id],
            "task_id": task_id,
            "queue": other,
            "priority": 0,  # lane 0: it has waited its turn already (model.tasks.fairness)
            "soft_time_limit": 60.0,
            "time_limit": 60.0 + Settings().cancel.grace_s,
            "ignore_result": True,  # the record is the result: no result subscription
        }
    ]
    assert _sweep(store, celery) == [] and len(celery.sent) == 1
    assert store.mark_running(task_id, 12, "host-a:20:21", 45_000) == "host-a:20:21:2"


def test_a_task_whose_run_message_was_never_confirmed_sent_is_sent_again(
    store: TaskStore,
) -> None:
    """An API process killed between a task's record and its message (or a reaper between a
    requeue and its send) leaves a QUEUED task with no message: a reaper sends it again."""
    from model.lifecycle.attempts import UNSENT_GRACE_S, resend_unsent

    sent = store.create("alice", "detect", {}, 3, 60).id
    store.mark_sent(sent)
    lost = store.create("alice", "detect", {}, 3, 60).id  # the submit died before sending
    started = store.create("alice", "detect", {}, 3, 60).id  # sent, its confirmation lost
    store.mark_running(started, 11, "host-b:10:11", 45_000)
    celery, now = _Celery(), time.time()
    assert resend_unsent(store, celery, _settings(), now) == []  # within the grace: in flight
    later = now + UNSENT_GRACE_S + 1
    assert resend_unsent(store, celery, _settings(), later) == [lost]
    # In the lane it was given (alice had one task waiting: lane 1), as its submit would have.
    assert [(m["task_id"], m["queue"], m["priority"]) for m in celery.sent] == [(lost, QUEUE, 1)]
    assert resend_unsent(store, celery, _settings(), later) == [] and len(celery.sent) == 1
    assert store.unsent_since(later) == []
    # A requeue is unsent until its reaper confirms the send; an end forgets it.
    store.redis.delete(lease_key(started))
    assert store.requeue(started, "host-b:10:11:1", None)
    assert store.unsent_since(later) == [started]
    assert store.finish(started, State.CANCELLED)
    assert store.unsent_since(later) == []


def test_reapers_of_several_workers_requeue_a_task_once(store: TaskStore) -> None:
    task_id = _running(store)
    store.redis.delete(lease_key(task_id))
    store.redis.set(f"{lease_key(task_id)}:requeue", "host-c", px=10_000)  # host-c is on it
    celery = _Celery()
    assert _sweep(store, celery) == [] and not celery.sent
    assert store.get(task_id).state == State.RUNNING
    # Without the lock, the Lua move still lets only the first through.
    assert store.requeue(task_id, "host-b:10:11:1", None)
    assert not store.requeue(task_id, "host-b:10:11:1", None)


def test_a_task_of_our_own_dead_pool_process_is_requeued_at_once(store: TaskStore) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pool process of this worker (we play its main process), dead
    task_id = _running(store, holder=f"host-a:{os.getpid()}:{child.pid}")
    alive = _running(store, holder=f"host-a:{os.getpid()}:{os.getpid()}")
    elsewhere = _running(store, holder=f"host-b:{os.getpid()}:{child.pid}")  # not ours to judge
    assert _sweep(store, _Celery()) == [task_id]  # its lease has not lapsed: no need to wait
    assert {store.get(i).state for i in (alive, elsewhere)} == {State.RUNNING}


def test_a_task_started_by_an_older_release_is_left_to_the_visibility_timeout(store) -> None:
    task_id = _running(store)
    store.redis.hdel(f"sc:task:{task_id}", "holder")
    store.redis.delete(lease_key(task_id))
    assert _sweep(store, _Celery()) == []


def test_a_lost_task_past_its_hard_limit_times_out_instead(store: TaskStore) -> None:
    task_id = _running(store)
    store.redis.delete(lease_key(task_id))
    ended: list = []
    celery = _Celery()
    assert _sweep(store, celery, ended, now=time.time() + 3600) == []
    assert [r.id for r in ended] == [task_id] and not celery.sent


def test_a_superseded_attempt_cannot_emit_or_finish(store: TaskStore) -> None:
    task_id = _running(store)
    first = "host-b:10:11:1"
    assert store.add_item(task_id, {"index": 0}, False, first)
    store.redis.delete(lease_key(task_id))
    assert store.requeue(task_id, first, None)
    second = store.mark_running(task_id, 21, "host-a:20:21", 45_000)
    # The first attempt comes back (it was frozen, or cut off from Redis): refused everywhere.
    assert not store.renew_lease(task_id, first, 45_000)
    assert not store.add_item(task_id, {"index": 1}, False, first)
    assert not store.set_provenance(task_id, {"model": "stale"}, first)
    assert not store.set_total(task_id, 99, first)
    assert not store.finish(task_id, State.SUCCEEDED, holder=first)
    assert store.add_item(task_id, {"index": 1}, False, second)
    assert store.add_item(task_id, {"index": 2}, False, second)
    assert store.finish(task_id, State.SUCCEEDED, holder=second)
    record = store.get(task_id)
    assert (record.state, record.done, record.total, record.provenance) == (
        State.SUCCEEDED,
        3,
        3,
        None,
    )
    assert sorted(item["index"] for item in store.items(task_id)) == [0, 1, 2]


def test_the_renewing_process_learns_its_attempt_was_lost(store: TaskStore) -> None:
    from model.lifecycle.attempts import Attempts

    task_id = _running(store)
    attempts = Attempts()
    attempt = attempts.begin(task_id, "host-b:10:11:1")
    attempts.renew(store, 45_000)
    assert not attempt.lost.is_set() and store.redis.pttl(lease_key(task_id)) > 40_000
    store.redis.delete(lease_key(task_id))
    attempts.renew(store, 45_000)  # lapsed, but nobody requeued it yet: the lease comes back
    assert not attempt.lost.is_set() and store.redis.exists(lease_key(task_id))
    store.redis.delete(lease_key(task_id))
    store.requeue(task_id, "host-b:10:11:1", None)
    attempts.renew(store, 45_000)
    assert attempt.lost.is_set() and not store.redis.exists(lease_key(task_id))


def test_a_worker_ends_after_a_time_limit_only_a_task_its_own_attempt_holds(store) -> None:
    from celery.exceptions import TimeLimitExceeded

    from model.lifecycle.ending import end_after_failure

    uploads = UploadStore(
        redis.Redis(port=store.redis.connection_pool.connection_kwargs["port"]), Path("/x")
    )
    task_id = _running(store, holder="host-b:10:11")
    store.redis.delete(lease_key(task_id))
    store.requeue(task_id, "host-b:10:11:1", None)  # requeued away from host-b's stale attempt
    assert end_after_failure(store, uploads, task_id, TimeLimitExceeded(1), "host-b:10:") is None
    store.mark_running(task_id, 21, "host-a:20:21", 45_000)
    assert end_after_failure(store, uploads, task_id, TimeLimitExceeded(1), "host-b:10:") is None
    assert store.get(task_id).state == State.RUNNING
    state = end_after_failure(store, uploads, task_id, TimeLimitExceeded(1), "host-a:20:")
    assert state == State.TIMED_OUT
    # A failure reported in the pool process itself: its own attempts' prefix.
    from model.lifecycle.attempts import own_prefix, process_holder

    ours = store.create("alice", "detect", {}, 1, 60).id
    store.mark_running(ours, os.getpid(), process_holder("host-a"), 45_000)
    error = RuntimeError("escaped the runner")
    assert end_after_failure(store, uploads, ours, error, own_prefix("host-a", True))
    never_started = store.create("alice", "detect", {}, 1, 60).id  # a soft limit before start
    assert end_after_failure(store, uploads, never_started, TimeLimitExceeded(1), "host-a:20:")


def test_the_runner_stops_an_attempt_that_lost_its_task_without_ending_it(store) -> None:
    from pydantic import BaseModel

    from model.jobs.contract import WorkerResources
    from model.jobs.items import ResultItem
    from model.jobs.spec import JobSpec
    from model.lifecycle.runner import run_task

    def run(ctx) -> None:
        ctx.emit(ResultItem(index=0, source="a", status="ok"))
        store.redis.delete(lease_key(ctx.task_id))  # frozen past the grace: another worker
        store.requeue(ctx.task_id, ctx.attempt.token, None)  # requeues it meanwhile
        ctx.emit(ResultItem(index=1, source="b", status="ok"))

    job = JobSpec(
        name="fake", summary="", params=BaseModel, input=BaseModel, run=run, item=ResultItem
    )
    task_id = store.create("alice", "fake", {}, 2, 60).id
    port = store.redis.connection_pool.connection_kwargs["port"]
    resources = WorkerResources(
        settings=_settings(),
        redis=store.redis,
        store=store,
        fetcher=None,
        uploads=UploadStore(redis.Redis(port=port), Path("/x")),
    )
    assert run_task(task_id, store, resources, {"fake": job}) is None
    record = store.get(task_id)
    assert (record.state, record.done) == (State.QUEUED, 1)

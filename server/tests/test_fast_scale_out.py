"""Fast layer of the scale-out: routing by model, the fleet of live workers as the API reads it,
queue positions per queue — against a bare redis-server (the live two-host tests are in
test_scale_out.py)."""

from __future__ import annotations

import pytest
import redis

from model import fleet
from model.celery_app import MODEL_QUEUE_PREFIX, QUEUE, queue_for, worker_queues
from model.settings import Settings
from model.store import State, TaskStore

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
    assert clean_redis.llen(MODEL_QUEUE_PREFIX + OTHER) == 1
    assert clean_redis.llen(QUEUE) == 1


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


def test_readiness_needs_a_worker_with_the_default_model(app_client, clean_redis) -> None:
    fleet.publish(clean_redis, "sc:worker:b:1", _beat("b", [OTHER], [QUEUE]), 20)
    resp = app_client.get("/readyz")
    assert resp.status_code == 503 and "default model" in resp.json["error"]["message"]


# --- queue positions and ETAs per queue ---------------------------------------------------------


@pytest.fixture
def store(clean_redis: redis.Redis) -> TaskStore:
    return TaskStore(clean_redis, 3600, 7200)


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

"""The live workers as everyone else sees them, on any number of hosts: each worker pool process
publishes a heartbeat — its worker's name, the models it loaded and on which device, the Celery
queues its worker takes, the tasks it runs — under `sc:worker:<name>:<pid>` with a short TTL.
A sorted set indexes the heartbeats by the time they lapse, so readers list the live ones
without scanning Redis. /readyz, GET /models and queue ETAs read them from here.

Torch-free and light: the HTTP process imports it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from model.keyspace import DEFAULT_QUEUE, WORKERS_INDEX, WORKERS_PREFIX

# How long a heartbeat key lives: a worker beats well within it (model/worker.py); the scrape
# reads a heartbeat's age as this minus the time it has left (model/api/exposition.py).
HEARTBEAT_TTL_S = 20


def heartbeat_key(worker_name: str, pid: int) -> str:
    return f"{WORKERS_PREFIX}{worker_name}:{pid}"


def publish(redis: Redis, key: str, beat: dict[str, Any], ttl_s: float) -> None:
    now = time.time()
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(key, json.dumps({**beat, "beat_at": now}), ex=int(ttl_s))
        pipe.zadd(WORKERS_INDEX, {key: now + ttl_s})
        pipe.zremrangebyscore(WORKERS_INDEX, "-inf", now)  # lapsed: their processes are gone
        pipe.execute()


def withdraw(redis: Redis, key: str) -> None:
    with redis.pipeline(transaction=False) as pipe:
        pipe.delete(key)
        pipe.zrem(WORKERS_INDEX, key)
        pipe.execute()


def live(redis: Redis) -> list[dict[str, Any]]:
    """The heartbeats of every live worker process, on every host."""
    keys = redis.zrangebyscore(WORKERS_INDEX, time.time(), "+inf")
    return [json.loads(raw) for raw in redis.mget(keys) if raw] if keys else []


def serving(beats: list[dict[str, Any]], queue: str | None) -> int:
    """Tasks the live workers taking `queue` can run at once."""
    queue = queue or DEFAULT_QUEUE
    return sum(int(b.get("slots", 1)) for b in beats if queue in b.get("queues", [DEFAULT_QUEUE]))


def models(beats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every model some live worker has loaded: its description (as the worker's registry gives
    it), with how many worker processes have it and on which workers (by name) and devices."""
    found: dict[str, dict[str, Any]] = {}
    for beat in beats:
        for description in beat.get("model_info", []):
            entry = found.setdefault(
                description["name"], {**description, "workers": 0, "hosts": [], "devices": []}
            )
            entry["workers"] += 1
            name, device = beat.get("name", ""), beat.get("devices", {}).get(description["name"])
            if name and name not in entry["hosts"]:
                entry["hosts"].append(name)
            if device and device not in entry["devices"]:
                entry["devices"].append(device)
    return found

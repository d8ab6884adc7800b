"""Fair sharing between keys (model/tasks/fairness.py): the HTTP app and the Celery messages it
sends, on a bare Redis; the order a worker takes them in is read with kombu itself."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from model.celery_app import QUEUE, make_celery
from model.tasks.fairness import LANES, lane_lists, waiting_messages
from model.tasks.store import TaskStore


@pytest.fixture
def two_keys(clean_redis: redis.Redis, tmp_path: Path):
    from model.api.app import create_app
    from model.keys import KeyStore
    from model.settings import Settings

    port = clean_redis.connection_pool.connection_kwargs["port"]
    settings = Settings(data_dir=tmp_path, redis={"port": port})
    app = create_app(settings)
    keys = KeyStore(settings.keys_db)
    return settings, app.test_client(), {name: keys.create(name) for name in ("big", "small")}


def _submit(client, key: str) -> str:
    body = {"type": "detect", "input": {"image_urls": ["https://example.org/p.jpg"]}}
    resp = client.post("/task", json=body, headers={"X-API-Key": key})
    assert resp.status_code == 202, resp.json
    return resp.json["task_id"]


def _position(client, key: str, task_id: str) -> int:
    return client.get(f"/status/{task_id}", headers={"X-API-Key": key}).json["queue_position"]


def _taken_in_order(settings, count: int) -> list[str]:
    """Task ids in the order a worker's consumer gets their messages (kombu's Redis channel)."""
    celery = make_celery(settings)
    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        taken = []
        for _ in range(count):
            message = channel.basic_get(QUEUE, no_ack=True)
            assert message is not None, f"only {len(taken)} of {count} messages"
            taken.append(message.headers["id"])
        assert channel.basic_get(QUEUE, no_ack=True) is None
    return taken


def test_lanes_are_the_keys_waiting_tasks_taken_in_one_step(
    store: TaskStore, clean_redis: redis.Redis
) -> None:
    # Parallel submits of one key (gunicorn runs several threads): each gets its own lane.
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda _: store.create("big", "noop", {}, 0, 60), range(8)))
    assert sorted(r.lane for r in records) == list(range(8))
    more = [store.create("big", "noop", {}, 0, 60) for _ in range(4)]
    assert [r.lane for r in more] == [8, 9, 9, 9]  # capped at the last lane
    assert store.create("small", "noop", {}, 0, 60).lane == 0
    assert lane_lists("q")[:2] == ["q", "q\x06\x161"] and len(lane_lists("q")) == LANES


def test_one_task_of_another_key_is_taken_before_a_big_keys_backlog(
    two_keys, clean_redis: redis.Redis
) -> None:
    settings, client, keys = two_keys
    backlog = [_submit(client, keys["big"]) for _ in range(5)]
    alone = _submit(client, keys["small"])
    lanes = [int(clean_redis.hget(f"sc:task:{t}", "lane")) for t in [*backlog, alone]]
    assert lanes == [0, 1, 2, 3, 4, 0]
    assert waiting_messages(clean_redis, QUEUE) == 6
    # Behind the big key's first task only (positions: 1 = next); the order a worker takes them.
    assert _position(client, keys["small"], alone) == 2
    assert [_position(client, keys["big"], t) for t in backlog] == [1, 3, 4, 5, 6]
    assert _taken_in_order(settings, 6) == [backlog[0], alone, *backlog[1:]]


def test_first_come_first_served_within_a_lane(two_keys) -> None:
    settings, client, keys = two_keys
    order = [
        _submit(client, keys["big"]),  # lane 0
        _submit(client, keys["small"]),  # lane 0
        _submit(client, keys["small"]),  # lane 1
        _submit(client, keys["big"]),  # lane 1
    ]
    assert _taken_in_order(settings, 4) == order

"""Reads across tasks: listing a key's tasks, queue positions and counts, and what ETAs are made
of (model/tasks/eta.py). Read-only; the moves are TaskStore's (model/tasks/store.py), which
extends this class so one object serves both."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from model.keyspace import (
    ALL_TASKS_KEY,
    DEFAULT_QUEUE,
    DURATIONS_PREFIX,
    PREFIX,
    QUEUE_KEY,
    RUNNING_KEY,
    owner_queue_key,
    owner_tasks_key,
    queue_index_key,
    task_key,
)
from model.tasks.record import TaskRecord
from model.tasks.states import State


class TaskListing:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def queued_count(self, owner: str | None = None) -> int:
        return int(self.redis.zcard(owner_queue_key(owner) if owner else QUEUE_KEY))

    def queued_counts(self, owner: str) -> tuple[int, int]:
        """(queued tasks in all, queued tasks of `owner`) in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(QUEUE_KEY)
            pipe.zcard(owner_queue_key(owner))
            total, own = pipe.execute()
        return int(total), int(own)

    def list(
        self, owner: str | None, state: State | None, offset: int, limit: int
    ) -> tuple[list[TaskRecord], int]:
        """Tasks newest first (one owner's, or everyone's for None), and how many match.

        One field (the state) is read per task, to count the live ones and filter; only the
        page's records are read whole (a big task's record can be large)."""
        index = owner_tasks_key(owner) if owner else ALL_TASKS_KEY
        ids = [i for i, s in self._live_states(index) if state is None or s == state.value]
        return self._records(index, ids[offset : offset + limit]), len(ids)

    def active_count(self, owner: str, job_type: str) -> int:
        """The owner's tasks of this type that are queued or running."""
        ids = [
            i for i, state in self._live_states(owner_tasks_key(owner)) if not State(state).terminal
        ]
        with self.redis.pipeline() as pipe:
            for task_id in ids:
                pipe.hget(task_key(task_id), "type")
            types = pipe.execute()
        return sum(found == job_type for found in types)

    def _live_states(self, index: str) -> list[tuple[str, str]]:
        """(id, state) of every task `index` names, newest first; expired ones leave it."""
        ids = self.redis.zrevrange(index, 0, -1)
        with self.redis.pipeline() as pipe:
            for task_id in ids:
                pipe.hget(task_key(task_id), "state")
            states = pipe.execute()
        self._drop_expired(index, ids, states)
        return [(task_id, found) for task_id, found in zip(ids, states, strict=True) if found]

    def prune_indexes(self) -> None:
        """Drop index entries whose record has expired (listing does it too, lazily)."""
        for index in [ALL_TASKS_KEY, *self.redis.scan_iter(match=f"{PREFIX}:owner:*:tasks")]:
            self._live_states(index)

    def _records(self, index: str, ids: list[str]) -> list[TaskRecord]:
        """The records of `ids`, in order; entries whose record expired meanwhile leave `index`."""
        with self.redis.pipeline() as pipe:
            for task_id in ids:
                pipe.hgetall(task_key(task_id))
            rows = pipe.execute()
        self._drop_expired(index, ids, rows)
        return [TaskRecord.from_hash(row) for row in rows if row]

    def _drop_expired(self, index: str, ids: list[str], found: list[Any]) -> None:
        """Remove from `index` the ids whose record was not found (it expired)."""
        expired = [task_id for task_id, row in zip(ids, found, strict=True) if not row]
        if expired:
            self.redis.zrem(index, *expired)

    def queue_position(self, record: TaskRecord) -> int | None:
        """How many tasks of its own queue are ahead of it (0: next), lane by lane
        (model.tasks.fairness); the workers serving other queues do not take it, so tasks there do
        not count."""
        rank = self.redis.zrank(queue_index_key(record.queue), record.id)
        return None if rank is None else int(rank)

    def mean_duration_s(self, job_type: str) -> float | None:
        """Of the job type's recent runs (a noop's milliseconds say nothing of a detect task)."""
        values = [float(v) for v in self.redis.lrange(DURATIONS_PREFIX + job_type, 0, -1)]
        return sum(values) / len(values) if values else None

    def running_ids(self) -> list[str]:
        return list(self.redis.smembers(RUNNING_KEY))

    def running_progress(self, queue: str) -> list[tuple[int, int, float]]:
        """(items finished, total, seconds this attempt has run) of each task running in
        `queue` now (ETAs of the tasks queued behind them: model/tasks/eta.py)."""
        ids = self.running_ids()
        fields = ("state", "queue", "done", "failed", "total", "attempt_started_at")
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(task_key(task_id), *fields)
            rows = pipe.execute()
        now, found = time.time(), []
        for state, its_queue, done, failed, total, started in rows:
            if state == State.RUNNING.value and (its_queue or DEFAULT_QUEUE) == queue and started:
                finished = int(done or 0) + int(failed or 0)
                found.append((finished, int(total or 0), max(0.0, now - float(started))))
        return found

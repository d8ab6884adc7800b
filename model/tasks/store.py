"""The task store: every move of a task's record in Redis, each one atomic (model/tasks/lua).

Celery's own states cannot tell "queued" from "unknown" from "expired", so every task has a record
`sc:task:<id>` (owner, type, state, progress, timestamps, error, job spec), a list of per-item
results (kept as they complete, so they survive a timeout or cancel), and after expiry a small
tombstone so an expired id answers 410 instead of 404. A detect task also keeps the IIIF
manifests it read, so the API can serve them to viewers with the detections attached without
fetching anything itself. Key names: model/keyspace.py.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from model.keyspace import (
    ALL_TASKS_KEY,
    DEFAULT_QUEUE,
    DEFERRED_KEY,
    DURATIONS_PREFIX,
    QUEUE_KEY,
    QUEUES_KEY,
    RUNNING_KEY,
    UNSENT_KEY,
    detail_key,
    idempotency_key,
    items_key,
    lease_key,
    manifests_key,
    owner_queue_key,
    owner_tasks_key,
    queue_index_key,
    stored_key,
    task_key,
    tomb_key,
)
from model.tasks.fairness import LANE_SPAN, LANES
from model.tasks.listing import TaskListing
from model.tasks.record import (
    DETAIL_LIST_CAP,
    DETAIL_PROVENANCE_BYTES,
    RECORD_PROVENANCE_BYTES,
    STATUS_LIST_CAP,
    TaskRecord,
    bounded_json,
)
from model.tasks.scripts import LuaScript
from model.tasks.states import State, sources_of

RECENT_DURATIONS = 20  # run durations kept per job type, for ETAs
DEFAULT_LEASE_MS = 45_000  # worker.lost_grace_s's default


def _as_str_dict(flat: Any) -> dict[str, str]:
    """A Lua HGETALL reply (flat list, or a map under RESP3) as a dict of strings."""
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in pairs
    }


class AlreadyClaimed(Exception):
    """The Idempotency-Key of a create is bound already: to this task, for this request."""

    def __init__(self, task_id: str, fingerprint: str | None) -> None:
        super().__init__(task_id)
        self.task_id = task_id
        self.fingerprint = fingerprint


class TaskStore(TaskListing):
    """Every move of a task (each atomic, model/tasks/lua), and a task's own reads; the reads
    across tasks come from TaskListing."""

    def __init__(self, redis: Redis, result_ttl_s: int, tombstone_ttl_s: int) -> None:
        super().__init__(redis)
        self.result_ttl_s = result_ttl_s
        self.tombstone_ttl_s = tombstone_ttl_s
        self._create = LuaScript(redis, "create")
        self._transition = LuaScript(redis, "transition")
        self._mark_running = LuaScript(redis, "mark_running")
        self._finish = LuaScript(redis, "finish")
        self._add_item = LuaScript(redis, "add_item")
        self._set_fields_script = LuaScript(redis, "set_fields")
        self._renew = LuaScript(redis, "renew")
        self._requeue = LuaScript(redis, "requeue")
        self._snapshot = LuaScript(redis, "snapshot")

    # --- submit side -------------------------------------------------------------------------
    def create(
        self,
        owner: str,
        job_type: str,
        spec: dict[str, Any],
        total: int,
        timeout_s: float,
        task_id: str | None = None,
        webhook: dict[str, Any] | None = None,
        queue: str = DEFAULT_QUEUE,
        idempotency: tuple[str, str] | None = None,
        running_max: int = 0,
    ) -> TaskRecord:
        """A QUEUED task, in the lane its owner's waiting tasks give it (`record.lane`: send
        its Celery message with that priority, then call `mark_sent`). `idempotency`: (the
        request's Idempotency-Key, its fingerprint), bound to the task as it is created; raises
        AlreadyClaimed, creating nothing, if the key is bound already."""
        task_id = task_id or uuid.uuid4().hex
        now = time.time()
        fields = {
            "id": task_id,
            "owner": owner,
            "type": job_type,
            "state": State.QUEUED.value,
            "spec": json.dumps(spec),
            "created_at": now,
            "timeout_s": timeout_s,
            "total": total,
            "queue": queue,
            "done": 0,
            "failed": 0,
        }
        if running_max:  # its key's cap on running tasks (mark_running)
            fields["running_max"] = running_max
        if webhook:
            fields["webhook"] = json.dumps(webhook)
        strings = {k: str(v) for k, v in fields.items()}
        key, fingerprint = idempotency or ("", "")
        created, outcome = self._create(
            keys={
                "record": task_key(task_id),
                "queued": QUEUE_KEY,
                "queue_index": queue_index_key(queue),
                "queues": QUEUES_KEY,
                "owner_queued": owner_queue_key(owner),
                "owner_tasks": owner_tasks_key(owner),
                "all_tasks": ALL_TASKS_KEY,
                "idempotency": idempotency_key(owner, key),
                "unsent": UNSENT_KEY,
            },
            args={
                "task_id": task_id,
                "now": now,
                "queue": queue,
                "last_lane": LANES - 1,
                "lane_span": LANE_SPAN,
                "binding": f"{task_id}:{fingerprint}" if key else "",
                "binding_ttl_s": self.result_ttl_s + 3600,
            },
            rest=[x for kv in strings.items() for x in kv],
        )
        if not created:
            bound_id, _, bound_fingerprint = str(outcome).partition(":")
            raise AlreadyClaimed(bound_id, bound_fingerprint or None)
        return TaskRecord.from_hash({**strings, "lane": outcome})

    def mark_sent(self, task_id: str) -> None:
        """The task's run message is in the broker: no reaper needs to send it again."""
        self.redis.zrem(UNSENT_KEY, task_id)

    def unsent_since(self, before: float) -> list[str]:
        """Tasks whose run message was not confirmed sent, created or requeued before `before`."""
        return self.redis.zrangebyscore(UNSENT_KEY, "-inf", before)

    def get(self, task_id: str) -> TaskRecord | None:
        data = self.redis.hgetall(task_key(task_id))
        return TaskRecord.from_hash(data) if data else None

    def snapshot(
        self, task_id: str, items_in: tuple[State, ...], max_items: int = 2**31
    ) -> tuple[TaskRecord | None, list[dict[str, Any]] | None, int]:
        """The record, and when its state is one of `items_in` its first `max_items` items
        (as stored) and how many it has (else None, 0)."""
        return self.parse_snapshot(
            self._snapshot(
                keys={"record": task_key(task_id), "items": items_key(task_id)},
                args={"states": json.dumps([s.value for s in items_in]), "max_items": max_items},
            )
        )

    def queue_snapshot(
        self, pipe: Any, task_id: str, items_in: tuple[State, ...], max_items: int = 2**31
    ) -> Callable[[Any], tuple[TaskRecord | None, list[dict[str, Any]] | None, int]]:
        """`snapshot`'s script queued on a pipeline of this store's Redis, to share its round
        trip; returns what reads its reply. EVALSHA, not the registered script: a pipeline of
        those first asks Redis whether they exist (one more round trip); a Redis that lost
        its scripts answers NOSCRIPT, and then `snapshot` reads it again on its own."""
        self._snapshot.queue_on(
            pipe,
            keys={"record": task_key(task_id), "items": items_key(task_id)},
            args={"states": json.dumps([s.value for s in items_in]), "max_items": max_items},
        )

        def read(reply: Any) -> tuple[TaskRecord | None, list[dict[str, Any]] | None, int]:
            if isinstance(reply, NoScriptError):
                return self.snapshot(task_id, items_in, max_items)
            if isinstance(reply, Exception):
                raise reply
            return self.parse_snapshot(reply)

        return read

    @staticmethod
    def parse_snapshot(
        reply: list[Any],
    ) -> tuple[TaskRecord | None, list[dict[str, Any]] | None, int]:
        fields, with_items, raw_items, count = reply
        if not fields:
            return None, None, 0
        data = _as_str_dict(fields)
        items = [json.loads(raw) for raw in raw_items] if with_items else None
        return TaskRecord.from_hash(data), items, int(count)

    def spec_of(self, task_id: str) -> dict[str, Any] | None:
        """The job spec alone (what a task's end needs to find its uploads)."""
        raw = self.redis.hget(task_key(task_id), "spec")
        return json.loads(raw) if raw else None

    def expired_owner(self, task_id: str) -> str | None:
        """Owner of a task whose record has expired, if its tombstone is still kept."""
        return self.redis.get(tomb_key(task_id))

    def idempotent_task(self, owner: str, key: str) -> tuple[str, str | None] | None:
        """(task id, request fingerprint) bound to an Idempotency-Key, if any."""
        value = self.redis.get(idempotency_key(owner, key))
        if not value:
            return None
        task_id, _, fingerprint = value.partition(":")
        return task_id, fingerprint or None

    def items(self, task_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(items_key(task_id), 0, -1)]

    def item_page(self, task_id: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Items `offset` to `offset + limit - 1` in the order they were stored, and how many
        the task has: a page costs its own items, whatever the task's size."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(items_key(task_id), offset, offset + limit - 1)
            pipe.llen(items_key(task_id))
            raw, count = pipe.execute()
        return [json.loads(item) for item in raw], int(count)

    def flag_cancel(self, task_id: str) -> bool:
        """Raise the cancel flag of a RUNNING task (its job checks it between batches)."""
        return (
            self._move(task_id, [State.RUNNING], {"cancel_requested_at": time.time()}) is not None
        )

    # --- worker side -------------------------------------------------------------------------
    def mark_running(
        self,
        task_id: str,
        worker_pid: int,
        holder: str | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> str | None:
        """QUEUED -> RUNNING (or RUNNING again when redelivered after a crash, once no live
        attempt holds it) as a new attempt of `holder` (`<worker>:<main pid>:<pid>`); returns the
        attempt's token, None if there is nothing to run, DEFERRED if its key has its
        `running_max` tasks running (the task stays QUEUED: see DEFERRED_KEY)."""
        owner, queue = self.redis.hmget(task_key(task_id), "owner", "queue")
        token = self._mark_running(
            keys={
                "record": task_key(task_id),
                "queued": QUEUE_KEY,
                "owner_queued": owner_queue_key(owner or ""),
                "running": RUNNING_KEY,
                "queue_index": queue_index_key(queue),
                "lease": lease_key(task_id),
                "deferred": DEFERRED_KEY,
                "unsent": UNSENT_KEY,
            },
            args={
                "task_id": task_id,
                "pid": worker_pid,
                "now": time.time(),
                "holder": holder or f"-:0:{worker_pid}",
                "lease_ms": lease_ms,
                "record_prefix": task_key(""),
            },
        )
        return token or None

    def pop_deferred(self) -> str | None:
        """The task deferred longest ago (its key was at its cap), out of the deferred set."""
        popped = self.redis.zpopmin(DEFERRED_KEY)
        return popped[0][0] if popped else None

    def renew_lease(self, task_id: str, token: str, lease_ms: int) -> bool:
        """False: the attempt no longer holds the task (requeued, or ended by someone else)."""
        return bool(
            self._renew(
                keys={"record": task_key(task_id), "lease": lease_key(task_id)},
                args={"token": token, "lease_ms": lease_ms},
            )
        )

    def holders(self, task_ids: list[str]) -> list[tuple[str | None, str | None]]:
        """(holder token, lease) of each task: who runs it, and whether it still proves it."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(task_key(task_id), "holder")
                pipe.get(lease_key(task_id))
            found = pipe.execute()
        return [(h or None, lease) for h, lease in zip(found[::2], found[1::2], strict=True)]

    def requeue(self, task_id: str, holder: str, lease: str | None) -> bool:
        """RUNNING -> QUEUED, if `holder` still holds it with this lease (None: lapsed)."""
        owner, queue = self.redis.hmget(task_key(task_id), "owner", "queue")
        return bool(
            self._requeue(
                keys={
                    "record": task_key(task_id),
                    "lease": lease_key(task_id),
                    "queued": QUEUE_KEY,
                    "owner_queued": owner_queue_key(owner or ""),
                    "queue_index": queue_index_key(queue),
                    "running": RUNNING_KEY,
                    "unsent": UNSENT_KEY,
                },
                args={
                    "task_id": task_id,
                    "holder": holder,
                    "lease": lease or "",
                    "now": time.time(),
                },
            )
        )

    def add_item(
        self, task_id: str, item: dict[str, Any], failed: bool, holder: str | None = None
    ) -> bool:
        """False: `holder` no longer holds the task, nothing was stored. An item whose index is
        stored already is not stored again (True)."""
        return bool(
            self._add_item(
                keys={
                    "record": task_key(task_id),
                    "items": items_key(task_id),
                    "stored": stored_key(task_id),
                },
                args={
                    "token": holder or "",
                    "item": json.dumps(item),
                    "counter": "failed" if failed else "done",
                    "index": str(item.get("index", "")),
                },
            )
        )

    def _set_fields(
        self, task_id: str, fields: dict[str, Any], holder: str | None, detail: str = ""
    ) -> bool:
        return bool(
            self._set_fields_script(
                keys={"record": task_key(task_id), "detail": detail_key(task_id)},
                args={"token": holder or "", "fields": json.dumps(fields), "detail": detail},
            )
        )

    def set_provenance(
        self, task_id: str, provenance: dict[str, Any], holder: str | None = None
    ) -> bool:
        """The record keeps a summary (long lists cut to STATUS_LIST_CAP entries plus a count,
        RECORD_PROVENANCE_BYTES at most), so every /status stays small; a fuller one is kept
        beside it for /result (lists up to DETAIL_LIST_CAP, DETAIL_PROVENANCE_BYTES at most)."""
        summary, cut = bounded_json(provenance, (STATUS_LIST_CAP, 10, 1), RECORD_PROVENANCE_BYTES)
        detail = "-"
        if cut:
            caps = (DETAIL_LIST_CAP, STATUS_LIST_CAP, 10)
            detail = bounded_json(provenance, caps, DETAIL_PROVENANCE_BYTES)[0]
        return self._set_fields(task_id, {"provenance": summary}, holder, detail)

    def full_provenance(self, record: TaskRecord) -> dict[str, Any] | None:
        """The provenance with every list whole (the record's own copy may be summarised)."""
        raw = self.redis.get(detail_key(record.id))
        return json.loads(raw) if raw else record.provenance

    def keep_manifest(self, task_id: str, index: int, document: str, lifetime_s: float) -> None:
        """Keep a manifest's JSON text with the task (zlib: manifests repeat themselves). It
        expires with the task's result (finish); until then, after the longest the task may
        still run (`lifetime_s`) plus the result's time to live, should it never finish."""
        packed = base64.b64encode(zlib.compress(document.encode(), 6)).decode()
        with self.redis.pipeline() as pipe:
            pipe.hset(manifests_key(task_id), str(index), packed)
            pipe.expire(manifests_key(task_id), int(lifetime_s + self.result_ttl_s) + 1)
            pipe.execute()

    def kept_manifest_indices(self, task_id: str) -> set[int]:
        return {int(i) for i in self.redis.hkeys(manifests_key(task_id)) if i.isdigit()}

    def keep_file(self, task_id: str, name: str, data: bytes, lifetime_s: float) -> None:
        """A file made by the task (a cluster's prototype PNG), kept beside its manifests and
        expiring with its result the same way (`file:<name>` fields of the same hash)."""
        with self.redis.pipeline() as pipe:
            pipe.hset(manifests_key(task_id), f"file:{name}", base64.b64encode(data).decode())
            pipe.expire(manifests_key(task_id), int(lifetime_s + self.result_ttl_s) + 1)
            pipe.execute()

    def kept_file(self, task_id: str, name: str) -> bytes | None:
        packed = self.redis.hget(manifests_key(task_id), f"file:{name}")
        return base64.b64decode(packed) if packed else None

    def kept_manifest(self, task_id: str, index: int) -> str | None:
        packed = self.redis.hget(manifests_key(task_id), str(index))
        return zlib.decompress(base64.b64decode(packed)).decode() if packed else None

    def set_summary(self, task_id: str, summary: dict[str, Any], holder: str | None = None) -> bool:
        return self._set_fields(task_id, {"summary": json.dumps(summary)}, holder)

    def set_total(self, task_id: str, total: int, holder: str | None = None) -> bool:
        return self._set_fields(task_id, {"total": total}, holder)

    def is_cancel_requested(self, task_id: str) -> bool:
        return bool(self.redis.hexists(task_key(task_id), "cancel_requested_at"))

    def forget_running(self, task_id: str) -> None:
        self.redis.srem(RUNNING_KEY, task_id)

    def finish(
        self,
        task_id: str,
        state: State,
        error: tuple[str, str] | None = None,
        only_from: list[State] | None = None,
        holder: str | None = None,
        worker: str | None = None,
        **extra: float,
    ) -> bool:
        """Move an active task to a terminal state, once (from the states TRANSITIONS allows,
        or only from `only_from`); start its expiry clock. Only while attempt `holder` holds
        it, or (`worker`: a holder prefix) an attempt of that worker or none ever did. Call it
        through model.lifecycle.ending."""
        now = time.time()
        expires_at = int(now + self.result_ttl_s) + 1
        fields: dict[str, Any] = {
            "state": state.value,
            "finished_at": now,
            "expires_at": now + self.result_ttl_s,
            **extra,
        }
        if error:
            fields["error_code"], fields["error_message"] = error
        owner, job_type, queue = self.redis.hmget(task_key(task_id), "owner", "type", "queue")
        previous = self._finish(
            keys={
                "record": task_key(task_id),
                "items": items_key(task_id),
                "detail": detail_key(task_id),
                "tomb": tomb_key(task_id),
                "queued": QUEUE_KEY,
                "owner_queued": owner_queue_key(owner or ""),
                "running": RUNNING_KEY,
                "durations": DURATIONS_PREFIX + (job_type or ""),
                "manifests": manifests_key(task_id),
                "queue_index": queue_index_key(queue),
                "lease": lease_key(task_id),
                "stored": stored_key(task_id),
                "unsent": UNSENT_KEY,
            },
            args={
                "allowed": json.dumps([s.value for s in (only_from or sources_of(state))]),
                "fields": json.dumps({k: str(v) for k, v in fields.items()}),
                "task_id": task_id,
                "expire_at": expires_at,
                "tomb_expire_at": expires_at + self.tombstone_ttl_s,
                "now": now,
                "durations_kept": RECENT_DURATIONS,
                "token": holder or "",
                "worker_prefix": worker or "",
            },
        )
        return bool(previous)

    def _move(self, task_id: str, allowed: list[State], fields: dict[str, Any]) -> str | None:
        previous = self._transition(
            keys={"record": task_key(task_id)},
            args={
                "allowed": json.dumps([s.value for s in allowed]),
                "fields": json.dumps({k: str(v) for k, v in fields.items()}),
            },
        )
        return previous or None

"""The task record in Redis: the one place task state lives, shared by the API and the worker.

Celery's own states cannot tell "queued" from "unknown" from "expired", so every task has a hash
`sc:task:<id>` (owner, type, state, progress, timestamps, error, job spec), a list of per-item
results `sc:task:<id>:items` (kept as they complete, so they survive a timeout or cancel), and
after expiry a small tombstone `sc:tomb:<id>` so an expired id answers 410 instead of 404.
A detect task also keeps the IIIF manifests it read (`sc:task:<id>:manifests`), so the API can
serve them to viewers with the detections attached without fetching anything itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis

PREFIX = "sc"
QUEUE_KEY = f"{PREFIX}:queued"  # sorted set: id -> submit time, for queue positions
RUNNING_KEY = f"{PREFIX}:running"  # set of ids a worker is running
DURATIONS_PREFIX = f"{PREFIX}:durations:"  # recent run durations (s) per job type, for ETAs
WORKERS_PREFIX = f"{PREFIX}:worker:"  # heartbeats of worker processes with models loaded
ALL_TASKS_KEY = f"{PREFIX}:tasks"  # sorted set of every live task id (admin listing)
RECENT_DURATIONS = 20
# Lists in a status (provenance: canvases skipped, manifest problems...) beyond this many
# entries are cut, with their full length beside them; /result has them whole.
STATUS_LIST_CAP = 100


class State(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (State.QUEUED, State.RUNNING)


ACTIVE_STATES = (State.QUEUED, State.RUNNING)

# Where a task may go from each state; terminal states go nowhere. Every move below is checked
# against it atomically in Redis (a task is finished once even when the job, the reaper, Celery's
# failure signal and a DELETE race). RUNNING -> RUNNING: a task redelivered after a crash.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED, State.FAILED, State.TIMED_OUT}),
    State.RUNNING: frozenset(
        {State.RUNNING, State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.CANCELLED}
    ),
}


def sources_of(target: State) -> list[State]:
    """The states a task may move to `target` from."""
    return [state for state, targets in TRANSITIONS.items() if target in targets]


# Move a task to a new state only if its current state is one of the allowed ones; atomic, so a
# task is finished exactly once even when the job, the reaper and a DELETE race.
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local allowed = cjson.decode(ARGV[1])
for _, s in ipairs(allowed) do
  if s == state then
    local fields = cjson.decode(ARGV[2])
    for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
    return state
  end
end
return false
"""


# QUEUED -> RUNNING (or RUNNING again when redelivered after a crash), in one step: the state,
# the queue indexes and the running set never disagree, whatever interrupts the worker (a soft
# time limit can raise between any two Python statements).
# KEYS: record, global queue, owner's queue, running set; ARGV: task id, pid, now.
_MARK_RUNNING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'QUEUED' and state ~= 'RUNNING' then return false end
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'worker_pid', ARGV[2],
           'attempt_started_at', ARGV[3])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return state
"""

# An active task's end, in one step: terminal state, expiry of its record, items and detail,
# the tombstone, out of every queue index and the running set, its duration for ETAs. A task
# is finished exactly once even when the job, the reaper, a signal handler and a DELETE race.
# KEYS: record, items, detail, tombstone, global queue, owner's queue, running set, durations,
# kept manifests.
# ARGV: allowed states (JSON), fields (JSON), task id, expire-at, tombstone expire-at, now,
# recent durations kept.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local ok = false
for _, s in ipairs(cjson.decode(ARGV[1])) do
  if s == state then ok = true end
end
if not ok then return false end
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], k, v) end
local expire_at = tonumber(ARGV[4])
redis.call('EXPIREAT', KEYS[1], expire_at)
redis.call('EXPIREAT', KEYS[2], expire_at)
redis.call('EXPIREAT', KEYS[3], expire_at)
redis.call('EXPIREAT', KEYS[9], expire_at)
local owner = redis.call('HGET', KEYS[1], 'owner')
redis.call('SET', KEYS[4], owner, 'EXAT', tonumber(ARGV[5]))
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
redis.call('SREM', KEYS[7], ARGV[3])
local started = redis.call('HGET', KEYS[1], 'started_at')
if started then
  redis.call('LPUSH', KEYS[8], tonumber(ARGV[6]) - tonumber(started))
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[7]) - 1)
end
return state
"""


# A task's record and, once it has ended (states in ARGV[1]), its items: what GET /status shows,
# read in one round trip instead of two.
_SNAPSHOT = """
local fields = redis.call('HGETALL', KEYS[1])
local state = nil
for i = 1, #fields, 2 do
  if fields[i] == 'state' then state = fields[i + 1] end
end
for _, s in ipairs(cjson.decode(ARGV[1])) do
  if s == state then return {fields, 1, redis.call('LRANGE', KEYS[2], 0, -1)} end
end
return {fields, 0, {}}
"""


@dataclass(frozen=True)
class TaskRecord:
    id: str
    owner: str
    type: str
    state: State
    spec: dict[str, Any]
    created_at: float
    timeout_s: float
    total: int
    done: int = 0
    failed: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None  # a task redelivered after a crash starts again
    finished_at: float | None = None
    expires_at: float | None = None
    cancel_requested_at: float | None = None
    worker_pid: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    provenance: dict[str, Any] | None = None
    # Result fields of a whole task beside its items (similarity: the compared pairs); kept in
    # the record's hash, so they expire with it.
    summary: dict[str, Any] | None = None
    # Where the task's events go: {"url", "events", "progress_interval_s"} (model/webhooks/).
    webhook: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> TaskRecord:
        def num(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        return cls(
            id=data["id"],
            owner=data["owner"],
            type=data["type"],
            state=State(data["state"]),
            spec=json.loads(data.get("spec") or "{}"),
            created_at=float(data["created_at"]),
            timeout_s=float(data["timeout_s"]),
            total=int(data.get("total") or 0),
            done=int(data.get("done") or 0),
            failed=int(data.get("failed") or 0),
            started_at=num("started_at"),
            attempt_started_at=num("attempt_started_at"),
            finished_at=num("finished_at"),
            expires_at=num("expires_at"),
            cancel_requested_at=num("cancel_requested_at"),
            worker_pid=int(data["worker_pid"]) if data.get("worker_pid") else None,
            error_code=data.get("error_code") or None,
            error_message=data.get("error_message") or None,
            provenance=json.loads(data["provenance"]) if data.get("provenance") else None,
            summary=json.loads(data["summary"]) if data.get("summary") else None,
            webhook=json.loads(data["webhook"]) if data.get("webhook") else None,
        )


def summarise_lists(value: Any, cap: int) -> tuple[Any, bool]:
    """`value` with every list longer than `cap` cut to its first `cap` entries; a cut list
    under a dict key gets a `<key>_count` sibling with its full length. Returns (copy, cut?)."""
    if isinstance(value, list):
        parts = [summarise_lists(v, cap) for v in value[:cap]]
        return [p for p, _ in parts], len(value) > cap or any(c for _, c in parts)
    if not isinstance(value, dict):
        return value, False
    out: dict[str, Any] = {}
    cut_any = False
    for key, child in value.items():
        out[key], cut = summarise_lists(child, cap)
        if isinstance(child, list) and len(child) > cap:
            out[f"{key}_count"] = len(child)
        cut_any = cut_any or cut
    return out, cut_any


def _as_str_dict(flat: Any) -> dict[str, str]:
    """A Lua HGETALL reply (flat list, or a map under RESP3) as a dict of strings."""
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in pairs
    }


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def items_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:items"


def detail_key(task_id: str) -> str:
    """The full provenance of a task whose lists were too long for its record (see
    `set_provenance`): read by /result only, so /status stays small."""
    return f"{PREFIX}:task:{task_id}:detail"


def manifests_key(task_id: str) -> str:
    """The source manifests a detect task read (JSON, compressed), by manifest index."""
    return f"{PREFIX}:task:{task_id}:manifests"


def tomb_key(task_id: str) -> str:
    return f"{PREFIX}:tomb:{task_id}"


def owner_tasks_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:tasks"


def owner_queue_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:queued"


def idempotency_key(owner: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{PREFIX}:idem:{owner}:{digest}"


class TaskStore:
    def __init__(self, redis: Redis, result_ttl_s: int, tombstone_ttl_s: int) -> None:
        self.redis = redis
        self.result_ttl_s = result_ttl_s
        self.tombstone_ttl_s = tombstone_ttl_s
        self._transition = redis.register_script(_TRANSITION)
        self._mark_running = redis.register_script(_MARK_RUNNING)
        self._finish = redis.register_script(_FINISH)
        self._snapshot = redis.register_script(_SNAPSHOT)

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
    ) -> TaskRecord:
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
            "done": 0,
            "failed": 0,
        }
        if webhook:
            fields["webhook"] = json.dumps(webhook)
        with self.redis.pipeline() as pipe:
            pipe.hset(task_key(task_id), mapping=fields)
            pipe.zadd(QUEUE_KEY, {task_id: now})
            pipe.zadd(owner_queue_key(owner), {task_id: now})
            pipe.zadd(owner_tasks_key(owner), {task_id: now})
            pipe.zadd(ALL_TASKS_KEY, {task_id: now})
            pipe.execute()
        return TaskRecord.from_hash({k: str(v) for k, v in fields.items()})

    def get(self, task_id: str) -> TaskRecord | None:
        data = self.redis.hgetall(task_key(task_id))
        return TaskRecord.from_hash(data) if data else None

    def snapshot(
        self, task_id: str, items_in: tuple[State, ...]
    ) -> tuple[TaskRecord | None, list[dict[str, Any]] | None]:
        """The record, and its items when its state is one of `items_in` (else None)."""
        fields, with_items, raw_items = self._snapshot(
            keys=[task_key(task_id), items_key(task_id)],
            args=[json.dumps([s.value for s in items_in])],
        )
        if not fields:
            return None, None
        data = _as_str_dict(fields)
        items = [json.loads(raw) for raw in raw_items] if with_items else None
        return TaskRecord.from_hash(data), items

    def expired_owner(self, task_id: str) -> str | None:
        """Owner of a task whose record has expired, if its tombstone is still kept."""
        return self.redis.get(tomb_key(task_id))

    def queued_count(self, owner: str | None = None) -> int:
        return int(self.redis.zcard(owner_queue_key(owner) if owner else QUEUE_KEY))

    def claim_idempotency(
        self, owner: str, key: str, task_id: str, fingerprint: str
    ) -> tuple[str, str | None] | None:
        """Bind an Idempotency-Key to task_id and the request's fingerprint; returns what an
        earlier claim bound instead: (task id, its fingerprint)."""
        name = idempotency_key(owner, key)
        ttl = self.result_ttl_s + 3600
        if self.redis.set(name, f"{task_id}:{fingerprint}", nx=True, ex=ttl):
            return None
        return self.idempotent_task(owner, key)

    def idempotent_task(self, owner: str, key: str) -> tuple[str, str | None] | None:
        """(task id, request fingerprint) bound to an Idempotency-Key, if any."""
        value = self.redis.get(idempotency_key(owner, key))
        if not value:
            return None
        task_id, _, fingerprint = value.partition(":")
        return task_id, fingerprint or None

    def list(
        self, owner: str | None, state: State | None, offset: int, limit: int
    ) -> tuple[list[TaskRecord], int]:
        """Tasks newest first (one owner's, or everyone's for None), and how many match.

        Only the page's records are read whole; a state filter reads one field per task."""
        index = owner_tasks_key(owner) if owner else ALL_TASKS_KEY
        if state is None:
            total = int(self.redis.zcard(index))
            ids = self.redis.zrevrange(index, offset, offset + limit - 1)
        else:
            ids = self._ids_in_state(index, state)
            total = len(ids)
            ids = ids[offset : offset + limit]
        return self._records(index, ids), total

    def _ids_in_state(self, index: str, state: State) -> list[str]:
        ids = self.redis.zrevrange(index, 0, -1)
        with self.redis.pipeline() as pipe:
            for task_id in ids:
                pipe.hget(task_key(task_id), "state")
            states = pipe.execute()
        return [i for i, s in zip(ids, states, strict=True) if s == state.value]

    def prune_indexes(self) -> None:
        """Drop index entries whose record has expired (listing does it too, lazily)."""
        for index in [ALL_TASKS_KEY, *self.redis.scan_iter(match=f"{PREFIX}:owner:*:tasks")]:
            self._read_index(index, self.redis.zrevrange(index, 0, -1), "exists")

    def _records(self, index: str, ids: list[str]) -> list[TaskRecord]:
        """The records of `ids`, in order; entries whose record expired leave the index."""
        rows = self._read_index(index, ids, "hgetall")
        return [TaskRecord.from_hash(row) for row in rows if row]

    def _read_index(self, index: str, ids: list[str], command: str) -> list[Any]:
        """`command` (hgetall, exists) on the record of each id; ids without one leave `index`."""
        with self.redis.pipeline() as pipe:
            for task_id in ids:
                getattr(pipe, command)(task_key(task_id))
            rows = pipe.execute()
        expired = [task_id for task_id, row in zip(ids, rows, strict=True) if not row]
        if expired:
            self.redis.zrem(index, *expired)
        return rows

    def queue_position(self, task_id: str) -> int | None:
        rank = self.redis.zrank(QUEUE_KEY, task_id)
        return None if rank is None else int(rank)

    def mean_duration_s(self, job_type: str) -> float | None:
        """Of the job type's recent runs (a noop's milliseconds say nothing of a detect task)."""
        values = [float(v) for v in self.redis.lrange(DURATIONS_PREFIX + job_type, 0, -1)]
        return sum(values) / len(values) if values else None

    def items(self, task_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(items_key(task_id), 0, -1)]

    def flag_cancel(self, task_id: str) -> bool:
        """Raise the cancel flag of a RUNNING task (its job checks it between batches)."""
        return (
            self._move(task_id, [State.RUNNING], {"cancel_requested_at": time.time()}) is not None
        )

    # --- worker side -------------------------------------------------------------------------
    def mark_running(self, task_id: str, worker_pid: int) -> bool:
        """QUEUED -> RUNNING (or RUNNING again when redelivered after a crash)."""
        owner = self.redis.hget(task_key(task_id), "owner") or ""
        moved = self._mark_running(
            keys=[task_key(task_id), QUEUE_KEY, owner_queue_key(owner), RUNNING_KEY],
            args=[task_id, worker_pid, time.time()],
        )
        return bool(moved)

    def add_item(self, task_id: str, item: dict[str, Any], failed: bool) -> None:
        with self.redis.pipeline() as pipe:
            pipe.rpush(items_key(task_id), json.dumps(item))
            pipe.hincrby(task_key(task_id), "failed" if failed else "done", 1)
            pipe.execute()

    def set_provenance(self, task_id: str, provenance: dict[str, Any]) -> None:
        """The record keeps a summary (long lists cut to STATUS_LIST_CAP entries plus a count),
        so every /status stays small; the whole provenance is kept beside it for /result."""
        summary, cut = summarise_lists(provenance, STATUS_LIST_CAP)
        with self.redis.pipeline() as pipe:
            pipe.hset(task_key(task_id), "provenance", json.dumps(summary))
            if cut:
                pipe.set(detail_key(task_id), json.dumps(provenance))
            else:
                pipe.delete(detail_key(task_id))
            pipe.execute()

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
        return {int(i) for i in self.redis.hkeys(manifests_key(task_id))}

    def kept_manifest(self, task_id: str, index: int) -> str | None:
        packed = self.redis.hget(manifests_key(task_id), str(index))
        return zlib.decompress(base64.b64decode(packed)).decode() if packed else None

    def set_summary(self, task_id: str, summary: dict[str, Any]) -> None:
        self.redis.hset(task_key(task_id), "summary", json.dumps(summary))

    def set_total(self, task_id: str, total: int) -> None:
        self.redis.hset(task_key(task_id), "total", total)

    def is_cancel_requested(self, task_id: str) -> bool:
        return bool(self.redis.hexists(task_key(task_id), "cancel_requested_at"))

    def running_count(self) -> int:
        return int(self.redis.scard(RUNNING_KEY))

    def running_ids(self) -> list[str]:
        return list(self.redis.smembers(RUNNING_KEY))

    def forget_running(self, task_id: str) -> None:
        self.redis.srem(RUNNING_KEY, task_id)

    def finish(
        self,
        task_id: str,
        state: State,
        error: tuple[str, str] | None = None,
        only_from: list[State] | None = None,
        **extra: float,
    ) -> bool:
        """Move an active task to a terminal state, once (from the states TRANSITIONS allows,
        or only from `only_from`); start its expiry clock. Call it through model.ending."""
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
        owner, job_type = self.redis.hmget(task_key(task_id), "owner", "type")
        previous = self._finish(
            keys=[
                task_key(task_id),
                items_key(task_id),
                detail_key(task_id),
                tomb_key(task_id),
                QUEUE_KEY,
                owner_queue_key(owner or ""),
                RUNNING_KEY,
                DURATIONS_PREFIX + (job_type or ""),
                manifests_key(task_id),
            ],
            args=[
                json.dumps([s.value for s in (only_from or sources_of(state))]),
                json.dumps({k: str(v) for k, v in fields.items()}),
                task_id,
                expires_at,
                expires_at + self.tombstone_ttl_s,
                now,
                RECENT_DURATIONS,
            ],
        )
        return bool(previous)

    def _move(self, task_id: str, allowed: list[State], fields: dict[str, Any]) -> str | None:
        previous = self._transition(
            keys=[task_key(task_id)],
            args=[
                json.dumps([s.value for s in allowed]),
                json.dumps({k: str(v) for k, v in fields.items()}),
            ],
        )
        return previous or None

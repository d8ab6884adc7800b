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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from model.fairness import LANE_SPAN, LANES

PREFIX = "sc"
QUEUE_KEY = f"{PREFIX}:queued"  # sorted set: id -> submit time, every queued task (backpressure)
RUNNING_KEY = f"{PREFIX}:running"  # set of ids a worker is running
# Sorted set: id -> time, tasks whose run message is not known to be sent yet (created or
# requeued, the send not confirmed). A reaper sends again what stays here (model/attempts.py):
# an API process killed between the record and the message loses no task.
UNSENT_KEY = f"{PREFIX}:unsent"
# Sorted set: id -> time, QUEUED tasks a worker took while their key had `running_max` tasks
# running; their message was dropped. Sent again when a task ends (a slot is free), or by the
# reaper as unsent (they are in UNSENT_KEY too).
DEFERRED_KEY = f"{PREFIX}:deferred"
DEFERRED = "deferred"  # what mark_running answers for such a task
QUEUES_KEY = f"{PREFIX}:queues"  # set of the Celery queues tasks were ever sent to
DURATIONS_PREFIX = f"{PREFIX}:durations:"  # recent run durations (s) per job type, for ETAs
WORKERS_PREFIX = f"{PREFIX}:worker:"  # heartbeats of worker processes with models loaded
ALL_TASKS_KEY = f"{PREFIX}:tasks"  # sorted set of every live task id (admin listing)
RECENT_DURATIONS = 20
# The Celery queue of tasks that name no particular model (model/celery_app.py routes the others).
DEFAULT_QUEUE = "scriptorium"
DEFAULT_LEASE_MS = 45_000  # worker.lost_grace_s's default
# Lists in a status (provenance: canvases skipped, manifest problems...) beyond this many
# entries are cut, with their full length beside them; /result has them up to DETAIL_LIST_CAP.
STATUS_LIST_CAP = 100
DETAIL_LIST_CAP = 1000
# Bytes of provenance a task keeps: in its record (read by every /status) and beside it (read by
# /result). Lists are cut shorter until it fits; past that only its scalar fields are kept.
RECORD_PROVENANCE_BYTES = 64 * 1024
DETAIL_PROVENANCE_BYTES = 1024 * 1024


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


# Where a task may go from each state; terminal states go nowhere. Every move below is checked
# against it atomically in Redis (a task is finished once even when the job, the reaper, Celery's
# failure signal and a DELETE race). RUNNING -> RUNNING: a task redelivered after a crash, once
# its attempt's lease is gone; RUNNING -> QUEUED: requeued because its worker died
# (model/attempts.py).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED, State.FAILED, State.TIMED_OUT}),
    State.RUNNING: frozenset(
        {
            State.QUEUED,
            State.RUNNING,
            State.SUCCEEDED,
            State.FAILED,
            State.TIMED_OUT,
            State.CANCELLED,
        }
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


# QUEUED -> RUNNING (or RUNNING again when redelivered after a crash, once the lease of the
# attempt that had it is gone), in one step: a new attempt (the counter goes up, its token
# becomes the holder, the lease holds the token), the state, the queue indexes and the running
# set never disagree, whatever interrupts the worker (a soft time limit can raise between any
# two Python statements). Returns the attempt's token; false: nothing to run, or another live
# attempt holds it (a duplicate delivery).
# KEYS: record, global queue, owner's queue, running set, its Celery queue's index, lease;
# ARGV: task id, pid, now, holder (the process), lease ms.
_MARK_RUNNING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'QUEUED' and state ~= 'RUNNING' then return false end
-- A key at its cap of running tasks: not now (its message is dropped; sent again later).
local cap = tonumber(redis.call('HGET', KEYS[1], 'running_max') or '0')
if state == 'QUEUED' and cap > 0 then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  local mine = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local other = redis.call('HMGET', ARGV[6] .. id, 'owner', 'state')
    if id ~= ARGV[1] and other[1] == owner and other[2] == 'RUNNING' then mine = mine + 1 end
  end
  if mine >= cap then
    redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
    redis.call('ZADD', KEYS[8], ARGV[3], ARGV[1])
    return 'deferred'
  end
end
-- This very call again (its reply was lost and the client retried): the attempt it began.
if state == 'RUNNING' and redis.call('HGET', KEYS[1], 'attempt_started_at') == ARGV[3] then
  local holder = redis.call('HGET', KEYS[1], 'holder') or ''
  if string.sub(holder, 1, #ARGV[4] + 1) == ARGV[4] .. ':' then return holder end
end
if state == 'RUNNING' and redis.call('EXISTS', KEYS[6]) == 1 then return false end
local token = ARGV[4] .. ':' .. redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'worker_pid', ARGV[2],
           'attempt_started_at', ARGV[3], 'holder', token)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SET', KEYS[6], token, 'PX', ARGV[5])
redis.call('ZREM', KEYS[7], ARGV[1])
return token
"""

# Checks shared by the writes of an attempt: the record's holder must still be its token.
_HELD = """
local function held(record, token)
  return token == '' or redis.call('HGET', record, 'holder') == token
end
"""

# An item of an attempt that still holds the task, stored once per index: a write retried after
# its reply was lost (a connection cut as Redis restarts) is not counted twice. KEYS: record,
# items, indices stored; ARGV: token ('' no check), item, counter field, index ('' none).
_ADD_ITEM = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1]) then return 0 end
if ARGV[4] ~= '' and redis.call('SADD', KEYS[3], ARGV[4]) == 0 then return 1 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
return 1
"""
)

# Fields of the record (provenance, summary, total), and the full provenance beside it, from an
# attempt that still holds the task. KEYS: record, detail; ARGV: token ('' no check), fields
# (JSON), detail ('' leave it, '-' delete it, else its new value).
_SET_FIELDS = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1]) then return 0 end
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], k, v) end
if ARGV[3] == '-' then redis.call('DEL', KEYS[2])
elseif ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end
return 1
"""
)

# The running attempt proves it is alive: its lease lives on (and comes back if it lapsed while
# nobody had requeued the task yet). KEYS: record, lease; ARGV: token, lease ms.
_RENEW = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

# A new task, queued in one step: its lane (model.fairness) is read from the owner's waiting
# tasks and taken in the same step, so parallel submits of one key get successive lanes. KEYS:
# record, global queue, its Celery queue's index, the set of queues, owner's queue, owner's
# tasks, every task, the Idempotency-Key's binding, the unsent set; ARGV: task id, now, queue,
# last lane, lane span, the binding's value ('' no key) and lifetime, then field, value pairs.
# With a key, binding it and creating the task are one step: a key is never bound to a task
# that does not exist (the API process could die in between). Returns {1, lane}, or {0, what
# the key was bound to} and creates nothing.
_CREATE = """
if ARGV[6] ~= '' then
  local bound = redis.call('GET', KEYS[8])
  if bound then return {0, bound} end
  redis.call('SET', KEYS[8], ARGV[6], 'EX', ARGV[7])
end
local lane = math.min(tonumber(ARGV[4]), redis.call('ZCARD', KEYS[5]))
local now = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lane', lane, unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], lane * tonumber(ARGV[5]) + now, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('ZADD', KEYS[6], now, ARGV[1])
redis.call('ZADD', KEYS[7], now, ARGV[1])
redis.call('ZADD', KEYS[9], now, ARGV[1])
return {1, lane}
"""

# RUNNING -> QUEUED: the attempt holding the task is gone (no lease: it stopped renewing it for
# longer than the grace; or the lease is still the token of a process known dead). Checked
# again here, whichever reaper got here first. KEYS: record, lease, global queue, owner's
# queue, its Celery queue's index, running set; ARGV: task id, holder expected, lease expected
# ('' none), now. Back in lane 0 (model.fairness): its score in the index is the time alone.
_REQUEUE = """
local state = redis.call('HGET', KEYS[1], 'state')
-- This very call again (its reply was lost and the client retried): it did requeue the task.
if state == 'QUEUED' and redis.call('HGET', KEYS[1], 'requeued_at') == ARGV[4] then return 1 end
if state ~= 'RUNNING' then return 0 end
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[2] then return 0 end
local lease = redis.call('GET', KEYS[2]) or ''
if lease ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'holder', '', 'requeued_at', ARGV[4], 'lane', 0)
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
redis.call('DEL', KEYS[2])
local now = tonumber(ARGV[4])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[7], now, ARGV[1])
return 1
"""

# An active task's end, in one step: terminal state, expiry of its record, items and detail,
# the tombstone, out of every queue index and the running set, its duration for ETAs. A task
# is finished exactly once even when the job, the reaper, a signal handler and a DELETE race.
# An attempt ends it only while it holds it (ARGV[8]); a worker's main process (time limits)
# only while one of its own processes holds it, or nobody ever started it (ARGV[9]).
# KEYS: record, items, detail, tombstone, global queue, owner's queue, running set, durations,
# kept manifests, its Celery queue's index, lease.
# ARGV: allowed states (JSON), fields (JSON), task id, expire-at, tombstone expire-at, now,
# recent durations kept, holder token ('' any), worker's holder prefix ('' any).
_FINISH = (
    _HELD
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
-- This very call again (its reply was lost and the client retried): it did end the task.
if redis.call('HGET', KEYS[1], 'finished_at') == cjson.decode(ARGV[2])['finished_at'] then
  return state
end
local ok = false
for _, s in ipairs(cjson.decode(ARGV[1])) do
  if s == state then ok = true end
end
if not ok or not held(KEYS[1], ARGV[8]) then return false end
if ARGV[9] ~= '' then
  local holder = redis.call('HGET', KEYS[1], 'holder') or ''
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
  local ours = string.sub(holder, 1, #ARGV[9]) == ARGV[9]
  if not ours and not (holder == '' and attempts == 0) then return false end
end
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
redis.call('ZREM', KEYS[10], ARGV[3])
redis.call('SREM', KEYS[7], ARGV[3])
redis.call('DEL', KEYS[11], KEYS[12])
redis.call('ZREM', KEYS[13], ARGV[3])
local started = redis.call('HGET', KEYS[1], 'started_at')
if started then
  redis.call('LPUSH', KEYS[8], tonumber(ARGV[6]) - tonumber(started))
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[7]) - 1)
end
return state
"""
)


# A task's record and, once it has ended (states in ARGV[1]), its first ARGV[2] items and how
# many it has: what GET /status shows, read in one round trip instead of two.
_SNAPSHOT = """
local fields = redis.call('HGETALL', KEYS[1])
local state = nil
for i = 1, #fields, 2 do
  if fields[i] == 'state' then state = fields[i + 1] end
end
for _, s in ipairs(cjson.decode(ARGV[1])) do
  if s == state then
    local first = redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
    return {fields, 1, first, redis.call('LLEN', KEYS[2])}
  end
end
return {fields, 0, {}, 0}
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
    # The Celery queue it was sent to (tasks naming a model go to that model's queue); None for
    # tasks queued by releases with one queue.
    queue: str | None = None
    lane: int = 0  # its place in the queue's fair sharing between keys (model/fairness.py)
    done: int = 0
    failed: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None  # a task redelivered after a crash starts again
    finished_at: float | None = None
    expires_at: float | None = None
    cancel_requested_at: float | None = None
    worker_pid: int | None = None
    attempt: int = 0  # attempts started (model/attempts.py)
    holder: str | None = None  # the token of the attempt holding it while it runs
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
            queue=data.get("queue") or None,
            lane=int(data.get("lane") or 0),
            done=int(data.get("done") or 0),
            failed=int(data.get("failed") or 0),
            started_at=num("started_at"),
            attempt_started_at=num("attempt_started_at"),
            finished_at=num("finished_at"),
            expires_at=num("expires_at"),
            cancel_requested_at=num("cancel_requested_at"),
            worker_pid=int(data["worker_pid"]) if data.get("worker_pid") else None,
            attempt=int(data.get("attempt") or 0),
            holder=data.get("holder") or None,
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
        if isinstance(child, list) and len(child) > cap and f"{key}_count" not in value:
            out[f"{key}_count"] = len(child)  # unless the producer counted it (more) already
        cut_any = cut_any or cut
    return out, cut_any


def bounded_json(value: dict[str, Any], caps: tuple[int, ...], budget: int) -> tuple[str, bool]:
    """JSON text of `value` within `budget` bytes: its lists cut to the first of `caps` that
    fits (summarise_lists); if none does, its scalar fields with `"truncated": true`, or that
    alone. Returns (text, whether anything was cut)."""
    for cap in caps:
        summary, cut = summarise_lists(value, cap)
        text = json.dumps(summary)
        if len(text.encode()) <= budget:
            return text, cut
    scalars = {k: v for k, v in value.items() if not isinstance(v, dict | list)}
    text = json.dumps({**scalars, "truncated": True})
    return (text if len(text.encode()) <= budget else '{"truncated": true}'), True


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


def stored_key(task_id: str) -> str:
    """The indices of the items stored, while the task runs (each is stored once)."""
    return f"{PREFIX}:task:{task_id}:stored"


def detail_key(task_id: str) -> str:
    """The full provenance of a task whose lists were too long for its record (see
    `set_provenance`): read by /result only, so /status stays small."""
    return f"{PREFIX}:task:{task_id}:detail"


def lease_key(task_id: str) -> str:
    """Held by the running attempt's token for worker.lost_grace_s, renewed while it runs."""
    return f"{PREFIX}:task:{task_id}:lease"


def manifests_key(task_id: str) -> str:
    """The source manifests a detect task read (JSON, compressed), by manifest index."""
    return f"{PREFIX}:task:{task_id}:manifests"


def tomb_key(task_id: str) -> str:
    return f"{PREFIX}:tomb:{task_id}"


def owner_tasks_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:tasks"


def owner_queue_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:queued"


def queue_index_key(queue: str | None) -> str:
    """The queued tasks of one Celery queue, by the time they joined it (queue positions);
    tasks of releases with one queue are only in QUEUE_KEY."""
    return f"{PREFIX}:queue:{queue}:queued" if queue else QUEUE_KEY


def idempotency_key(owner: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{PREFIX}:idem:{owner}:{digest}"


class AlreadyClaimed(Exception):
    """The Idempotency-Key of a create is bound already: to this task, for this request."""

    def __init__(self, task_id: str, fingerprint: str | None) -> None:
        super().__init__(task_id)
        self.task_id = task_id
        self.fingerprint = fingerprint


class TaskStore:
    def __init__(self, redis: Redis, result_ttl_s: int, tombstone_ttl_s: int) -> None:
        self.redis = redis
        self.result_ttl_s = result_ttl_s
        self.tombstone_ttl_s = tombstone_ttl_s
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._mark_running = redis.register_script(_MARK_RUNNING)
        self._finish = redis.register_script(_FINISH)
        self._add_item = redis.register_script(_ADD_ITEM)
        self._set_fields_script = redis.register_script(_SET_FIELDS)
        self._renew = redis.register_script(_RENEW)
        self._requeue = redis.register_script(_REQUEUE)
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
            keys=[
                task_key(task_id),
                QUEUE_KEY,
                queue_index_key(queue),
                QUEUES_KEY,
                owner_queue_key(owner),
                owner_tasks_key(owner),
                ALL_TASKS_KEY,
                idempotency_key(owner, key),
                UNSENT_KEY,
            ],
            args=[
                task_id,
                now,
                queue,
                LANES - 1,
                LANE_SPAN,
                f"{task_id}:{fingerprint}" if key else "",
                self.result_ttl_s + 3600,
                *(x for kv in strings.items() for x in kv),
            ],
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
                keys=[task_key(task_id), items_key(task_id)],
                args=[json.dumps([s.value for s in items_in]), max_items],
            )
        )

    def queue_snapshot(
        self, pipe: Any, task_id: str, items_in: tuple[State, ...], max_items: int = 2**31
    ) -> Callable[[Any], tuple[TaskRecord | None, list[dict[str, Any]] | None, int]]:
        """`snapshot`'s script queued on a pipeline of this store's Redis, to share its round
        trip; returns what reads its reply. EVALSHA, not the registered script: a pipeline of
        those first asks Redis whether they exist (one more round trip); a Redis that lost
        its scripts answers NOSCRIPT, and then `snapshot` reads it again on its own."""
        args = (json.dumps([s.value for s in items_in]), max_items)
        pipe.evalsha(self._snapshot.sha, 2, task_key(task_id), items_key(task_id), *args)

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

    def queued_count(self, owner: str | None = None) -> int:
        return int(self.redis.zcard(owner_queue_key(owner) if owner else QUEUE_KEY))

    def queued_counts(self, owner: str) -> tuple[int, int]:
        """(queued tasks in all, queued tasks of `owner`) in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(QUEUE_KEY)
            pipe.zcard(owner_queue_key(owner))
            total, own = pipe.execute()
        return int(total), int(own)

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
        (model.fairness); the workers serving other queues do not take it, so tasks there do
        not count."""
        rank = self.redis.zrank(queue_index_key(record.queue), record.id)
        return None if rank is None else int(rank)

    def mean_duration_s(self, job_type: str) -> float | None:
        """Of the job type's recent runs (a noop's milliseconds say nothing of a detect task)."""
        values = [float(v) for v in self.redis.lrange(DURATIONS_PREFIX + job_type, 0, -1)]
        return sum(values) / len(values) if values else None

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
            keys=[
                task_key(task_id),
                QUEUE_KEY,
                owner_queue_key(owner or ""),
                RUNNING_KEY,
                queue_index_key(queue),
                lease_key(task_id),
                DEFERRED_KEY,
                UNSENT_KEY,
            ],
            args=[
                task_id,
                worker_pid,
                time.time(),
                holder or f"-:0:{worker_pid}",
                lease_ms,
                task_key(""),
            ],
        )
        return token or None

    def pop_deferred(self) -> str | None:
        """The task deferred longest ago (its key was at its cap), out of the deferred set."""
        popped = self.redis.zpopmin(DEFERRED_KEY)
        return popped[0][0] if popped else None

    def renew_lease(self, task_id: str, token: str, lease_ms: int) -> bool:
        """False: the attempt no longer holds the task (requeued, or ended by someone else)."""
        return bool(
            self._renew(keys=[task_key(task_id), lease_key(task_id)], args=[token, lease_ms])
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
                keys=[
                    task_key(task_id),
                    lease_key(task_id),
                    QUEUE_KEY,
                    owner_queue_key(owner or ""),
                    queue_index_key(queue),
                    RUNNING_KEY,
                    UNSENT_KEY,
                ],
                args=[task_id, holder, lease or "", time.time()],
            )
        )

    def add_item(
        self, task_id: str, item: dict[str, Any], failed: bool, holder: str | None = None
    ) -> bool:
        """False: `holder` no longer holds the task, nothing was stored. An item whose index is
        stored already is not stored again (True)."""
        return bool(
            self._add_item(
                keys=[task_key(task_id), items_key(task_id), stored_key(task_id)],
                args=[
                    holder or "",
                    json.dumps(item),
                    "failed" if failed else "done",
                    str(item.get("index", "")),
                ],
            )
        )

    def _set_fields(
        self, task_id: str, fields: dict[str, Any], holder: str | None, detail: str = ""
    ) -> bool:
        return bool(
            self._set_fields_script(
                keys=[task_key(task_id), detail_key(task_id)],
                args=[holder or "", json.dumps(fields), detail],
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

    def running_count(self) -> int:
        return int(self.redis.scard(RUNNING_KEY))

    def running_ids(self) -> list[str]:
        return list(self.redis.smembers(RUNNING_KEY))

    def running_progress(self, queue: str) -> list[tuple[int, int, float]]:
        """(items finished, total, seconds this attempt has run) of each task running in
        `queue` now (ETAs of the tasks queued behind them: model/eta.py)."""
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
        through model.ending."""
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
                queue_index_key(queue),
                lease_key(task_id),
                stored_key(task_id),
                UNSENT_KEY,
            ],
            args=[
                json.dumps([s.value for s in (only_from or sources_of(state))]),
                json.dumps({k: str(v) for k, v in fields.items()}),
                task_id,
                expires_at,
                expires_at + self.tombstone_ttl_s,
                now,
                RECENT_DURATIONS,
                holder or "",
                worker or "",
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

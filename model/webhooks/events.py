"""The webhook outbox, in Redis: what a task's end and its progress enqueue, and the state of
each message until it is delivered or given up.

- A message (`sc:webhook:msg:<id>`, a hash) is one event of one task: its body (fixed when the
  event happens: every attempt sends the same bytes, under the same `webhook-id`, so receivers
  dedupe by it), its URL and owner, how many attempts were made, its state
  (pending, sending, delivered, failed, gave_up, refused, skipped).
- `sc:webhook:due` (a sorted set) says when each message is next due. Queueing a message sets
  its due time a lease ahead, so a message whose queueing or attempt was lost (a crash, Redis
  briefly away) is queued again by the webhooks worker's scheduler once the lease runs out:
  at-least-once. An attempt claims its message atomically (its number must be the next one), so
  a message queued twice is still sent once per attempt.
- Fair to every key, and to receivers that are down: an attempt is claimed only while its key
  has fewer than `webhooks.key_in_flight` attempts in flight (`sc:webhook:flight:<owner>`, a
  sorted set of leases) and its receiver host's breaker is closed (`sc:webhook:breaker:<host>`:
  consecutive failures, and until when it is open). Otherwise the message is due again a
  little later, its attempt not used: one key's hanging receiver holds `key_in_flight`
  processes, and the other keys' events go by meanwhile.
- Each attempt is logged in `sc:task:<id>:webhook` (a list, the last 50), which GET /status
  shows and which expires with the task's record.

Light (redis, celery's client side): the API, the inference worker and the webhooks worker all
import it. Nothing here makes an HTTP request: model/webhooks/delivery.py does, in the webhooks
worker only.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis import Redis

from model.celery_app import DELIVER_WEBHOOK, WEBHOOK_QUEUE
from model.jobs.registry import longest_hard_limit_s
from model.keyspace import (
    WEBHOOK_BREAKER_PREFIX,
    WEBHOOK_DUE_KEY,
    WEBHOOK_FLIGHT_PREFIX,
    WEBHOOK_MSG_PREFIX,
    WEBHOOK_PROGRESS_PREFIX,
    task_key,
    webhook_log_key,
)
from model.services import current
from model.tasks.record import TaskRecord
from model.tasks.states import State
from model.tasks.store import TaskStore

if TYPE_CHECKING:
    from celery import Celery

    from model.settings import Settings

log = logging.getLogger("scriptorium.webhooks")

DELIVERIES_KEPT = 50
COMPLETED, PROGRESS = "completed", "progress"


def message_key(msg_id: str) -> str:
    return WEBHOOK_MSG_PREFIX + msg_id


def deliveries_key(task_id: str) -> str:
    return webhook_log_key(task_id)


def lease_s(settings: Settings) -> float:
    """How long a queued or running attempt owns its message: an attempt's own limit, plus
    room for the queue; past it the scheduler queues the message again."""
    return 2 * settings.webhooks.timeout_s + 30


def key_in_flight(settings: Settings) -> int:
    """Attempts of one key in flight at once: as set, but fewer than the worker's processes."""
    hooks = settings.webhooks
    return max(1, min(hooks.key_in_flight, hooks.concurrency - 1))


def defer_s(settings: Settings) -> float:
    """How much later a message whose key is at its cap is due again (an attempt in flight
    takes up to timeout_s; sooner, to take a place that frees early)."""
    return max(0.1, settings.webhooks.timeout_s / 4)


def receiver_host(url: str) -> str:
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}:{parts.port or ''}"


# --- the Celery side: which app sends ------------------------------------------------------------

_celery: Celery | None = None  # a test's stand-in; else the process's (model/services.py)


def use_celery(app: Celery | None) -> None:
    """Queue deliveries with this app instead of the process's services' (tests)."""
    global _celery
    _celery = app


def _app() -> Celery:
    return _celery if _celery is not None else current().celery


def send(msg_id: str, attempt: int) -> None:
    _app().send_task(DELIVER_WEBHOOK, args=[msg_id, attempt], queue=WEBHOOK_QUEUE)


# --- event bodies ------------------------------------------------------------------------------


def _iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC).isoformat()


def event_body(record: TaskRecord, event: str, settings: Settings) -> bytes:
    """`{"type": "task.<event>", "timestamp", "data": {...}}` (the Standard Webhooks shape): the
    task's id, type, state, progress, times, error and links, never its result (GET it)."""
    base = settings.http.public_base_url()
    data: dict[str, Any] = {
        "task_id": record.id,
        "type": record.type,
        "state": record.state.value,
        "progress": {"done": record.done, "total": record.total, "failed": record.failed},
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "expires_at": _iso(record.expires_at),
        "error": (
            {"code": record.error_code, "message": record.error_message or ""}
            if record.error_code
            else None
        ),
        "status_url": f"{base}/status/{record.id}",
        "result_url": f"{base}/result/{record.id}" if record.state.terminal else None,
    }
    body = {"type": f"task.{event}", "timestamp": _iso(time.time()), "data": data}
    return _fit(body, settings.webhooks.max_payload_bytes)


def _fit(body: dict[str, Any], cap: int) -> bytes:
    """The body as JSON within `cap` bytes: a long error message is cut, else only the task's
    id, type and state are left (the status URL has the rest)."""
    raw = json.dumps(body).encode()
    error = body["data"].get("error")
    if len(raw) > cap and error:
        error["message"] = error["message"][: max(0, len(error["message"]) - (len(raw) - cap))]
        error["truncated"] = True
        raw = json.dumps(body).encode()
    if len(raw) > cap:
        keep = ("task_id", "type", "state", "status_url")
        body["data"] = {k: body["data"][k] for k in keep} | {"truncated": True}
        raw = json.dumps(body).encode()
    return raw


# --- the outbox --------------------------------------------------------------------------------

# Create a message unless it exists (an event is enqueued once), due a lease ahead.
# KEYS: message, due set; ARGV: fields (JSON), ttl s, due at, message id.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for k, v in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[4])
return 1
"""

# Claim attempt ARGV[1] of a message: only the next attempt, of a message that is pending or
# whose last attempt's lease ran out; and only while its key has fewer than ARGV[5] attempts in
# flight and its receiver host's breaker is closed (else it is due again later, at ARGV[6] or
# when the breaker half-opens). KEYS: message, due set; ARGV: attempt, now, lease until, message
# id, key's cap, due again at, flight prefix, breaker prefix. Returns the fields, or false.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return false
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts ~= tonumber(ARGV[1]) - 1 then return false end
local now = tonumber(ARGV[2])
if state == 'sending' then
  if tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') > now then
    return false
  end
elseif state ~= 'pending' then
  return false
end
local flight = ARGV[7] .. (redis.call('HGET', KEYS[1], 'owner') or '')
redis.call('ZREMRANGEBYSCORE', flight, '-inf', now)
redis.call('ZREM', flight, ARGV[4])  -- its own lapsed attempt
if redis.call('ZCARD', flight) >= tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[6]), ARGV[4])
  return false
end
local host = redis.call('HGET', KEYS[1], 'host')
if host and host ~= '' then
  local breaker = ARGV[8] .. host
  local open_until = tonumber(redis.call('HGET', breaker, 'open_until') or '0')
  if open_until > now then
    redis.call('ZADD', KEYS[2], math.max(open_until, tonumber(ARGV[6])), ARGV[4])
    return false
  end
  if open_until > 0 then  -- half-open: this attempt probes, the others wait for its answer
    redis.call('HSET', breaker, 'open_until', ARGV[3])
  end
end
redis.call('ZADD', flight, tonumber(ARGV[3]), ARGV[4])
redis.call('EXPIREAT', flight, math.ceil(tonumber(ARGV[3])))
redis.call('HSET', KEYS[1], 'state', 'sending', 'attempts', ARGV[1], 'lease_until', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[4])
return redis.call('HGETALL', KEYS[1])
"""

# After an attempt to a receiver host. KEYS: its breaker; ARGV: outcome (ok, failed, other),
# now, failures that open it, open for s, key ttl s. A success closes it; failures in a row open
# it; anything else (a 4xx, a refusal) lets the next attempt probe it.
_HOST_ANSWERED = """
if ARGV[1] == 'ok' then
  redis.call('DEL', KEYS[1])
  return 0
end
if ARGV[1] == 'failed' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if failures >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[2]) + tonumber(ARGV[4]))
  end
elseif redis.call('HEXISTS', KEYS[1], 'open_until') == 1 then
  redis.call('HSET', KEYS[1], 'open_until', ARGV[2])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
"""

# Messages due by now, each given a lease (so that two schedulers never queue the same one);
# messages that expired leave the set. KEYS: due set; ARGV: now, lease until, most, prefix.
# Returns [id, attempts made, ...].
_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local attempts = redis.call('HGET', ARGV[4] .. id, 'attempts')
  if attempts then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, attempts)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Log one attempt where the task's status shows it; the log expires with the task's record
# (or, while the task runs, after `fallback` s). KEYS: record, log; ARGV: entry, kept, fallback.
_LOG = """
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
end
return 1
"""


@dataclass
class Message:
    id: str
    task_id: str
    owner: str
    event: str
    url: str
    body: bytes
    attempts: int
    created_at: float
    retry_until: float
    host: str = ""  # the receiver's host:port (its breaker); "" in messages of older releases

    @classmethod
    def from_hash(cls, msg_id: str, data: dict[str, str]) -> Message:
        return cls(
            id=msg_id,
            task_id=data["task_id"],
            owner=data["owner"],
            event=data["event"],
            url=data["url"],
            body=data["body"].encode(),
            attempts=int(data.get("attempts") or 0),
            created_at=float(data["created_at"]),
            retry_until=float(data["retry_until"]),
            host=data.get("host", ""),
        )


class Outbox:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._create = redis.register_script(_CREATE)
        self._claim = redis.register_script(_CLAIM)
        self._due = redis.register_script(_DUE)
        self._log = redis.register_script(_LOG)
        self._host_answered = redis.register_script(_HOST_ANSWERED)

    # --- producers: the API and the inference worker -------------------------------------
    def enqueue(self, record: TaskRecord, event: str, msg_id: str, retry_for_s: float) -> bool:
        """Write the event's message and queue its first attempt; False if it existed."""
        webhook = record.webhook or {}
        now = time.time()
        fields = {
            "task_id": record.id,
            "owner": record.owner,
            "event": event,
            "url": webhook["url"],
            "host": receiver_host(webhook["url"]),
            "body": event_body(record, event, self.settings).decode(),
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "retry_until": now + retry_for_s,
        }
        ttl = int(self.settings.webhooks.retry_for_s + self.settings.results.ttl_s)
        created = self._create(
            keys=[message_key(msg_id), WEBHOOK_DUE_KEY],
            args=[json.dumps(fields), ttl, now + lease_s(self.settings), msg_id],
        )
        if not created:
            return False
        try:
            send(msg_id, 1)
        except Exception:  # the scheduler queues it when its lease runs out
            log.warning("could not queue webhook %s now; the scheduler will", msg_id, exc_info=True)
        return True

    # --- the webhooks worker -------------------------------------------------------------
    def claim(self, msg_id: str, attempt: int, now: float) -> Message | None:
        fields = self._claim(
            keys=[message_key(msg_id), WEBHOOK_DUE_KEY],
            args=[
                attempt,
                now,
                now + lease_s(self.settings),
                msg_id,
                key_in_flight(self.settings),
                now + defer_s(self.settings),
                WEBHOOK_FLIGHT_PREFIX,
                WEBHOOK_BREAKER_PREFIX,
            ],
        )
        if not fields:
            return None
        data = _as_dict(fields)
        return Message.from_hash(msg_id, data)

    def settle(self, message: Message, state: str, next_at: float | None) -> None:
        """After an attempt: pending again (due at `next_at`) or final."""
        with self.redis.pipeline() as pipe:
            pipe.hset(message_key(message.id), mapping={"state": state, "lease_until": 0})
            pipe.zrem(WEBHOOK_FLIGHT_PREFIX + message.owner, message.id)
            if next_at is None:
                pipe.zrem(WEBHOOK_DUE_KEY, message.id)
            else:
                pipe.zadd(WEBHOOK_DUE_KEY, {message.id: next_at})
            pipe.execute()

    def host_answered(self, host: str, outcome: str, now: float) -> None:
        """The breaker of a receiver host after an attempt: `ok` (a 2xx), `failed` (no answer,
        429, 5xx) or anything else."""
        if not host:
            return
        hooks = self.settings.webhooks
        self._host_answered(
            keys=[WEBHOOK_BREAKER_PREFIX + host],
            args=[
                outcome,
                now,
                hooks.breaker_failures,
                hooks.breaker_open_s,
                int(hooks.breaker_open_s + lease_s(self.settings) + 3600),
            ],
        )

    def due(self, now: float, most: int = 100) -> list[tuple[str, int]]:
        """Messages due now, leased to the caller (which queues their next attempt)."""
        flat = self._due(
            keys=[WEBHOOK_DUE_KEY],
            args=[now, now + lease_s(self.settings), most, WEBHOOK_MSG_PREFIX],
        )
        return [(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]

    def log_attempt(self, task_id: str, entry: dict[str, Any]) -> None:
        fallback = int(self.settings.results.ttl_s + longest_hard_limit_s(self.settings))
        self._log(
            keys=[task_key(task_id), deliveries_key(task_id)],
            args=[json.dumps(entry), DELIVERIES_KEPT, fallback],
        )


def _as_dict(flat: Any) -> dict[str, str]:
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in pairs
    }


def deliveries(redis: Redis, task_id: str) -> list[dict[str, Any]]:
    """The task's delivery attempts, oldest first (GET /status)."""
    return [json.loads(raw) for raw in redis.lrange(deliveries_key(task_id), 0, -1)]


# --- what tasks enqueue ------------------------------------------------------------------------


def task_ended(store: TaskStore, record: TaskRecord) -> bool:
    """The `completed` event of a task that has just ended (lifecycle/ending.py calls it once)."""
    webhook = record.webhook
    if not webhook or COMPLETED not in webhook.get("events", [COMPLETED]):
        return False
    settings = current().settings
    outbox = Outbox(store.redis, settings)
    return outbox.enqueue(
        record, COMPLETED, f"msg_{record.id}_{COMPLETED}", settings.webhooks.retry_for_s
    )


class ProgressEvents:
    """`progress` events of a running task: at most one every `progress_interval_s` (a gate in
    Redis, so a redelivered task does not send more). Delivered once, never retried: a later
    event says more than a late one would."""

    def __init__(self, store: TaskStore, task_id: str, interval_s: float) -> None:
        self.store = store
        self.task_id = task_id
        self.interval_s = interval_s
        self._next = 0.0  # monotonic: no Redis round trip between events

    @classmethod
    def of(cls, record: TaskRecord, store: TaskStore) -> ProgressEvents | None:
        webhook = record.webhook
        if not webhook or PROGRESS not in webhook.get("events", []):
            return None
        return cls(store, record.id, float(webhook.get("progress_interval_s") or 30))

    def item_done(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        try:
            gate = WEBHOOK_PROGRESS_PREFIX + self.task_id
            if not self.store.redis.set(gate, 1, nx=True, px=int(self.interval_s * 1000)):
                return
            record = self.store.get(self.task_id)
            if record is None or record.state != State.RUNNING:
                return
            msg_id = f"msg_{self.task_id}_{PROGRESS}_{uuid.uuid4().hex[:12]}"
            Outbox(self.store.redis, current().settings).enqueue(record, PROGRESS, msg_id, 0)
        except Exception:  # a progress event never fails the job
            log.warning("progress event of task %s not queued", self.task_id, exc_info=True)

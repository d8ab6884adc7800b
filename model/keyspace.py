"""Every Redis key the service uses, and how each is named: one place, so no module writes the
`sc:` prefix by hand and a reader sees the whole keyspace at once. A leaf: it imports nothing
of the service, so any module may use it.

- Tasks (model/tasks): the record `sc:task:<id>` (a hash), its items, detail, lease, kept
  manifests and files, webhook log and shares beside it; per owner their tasks and queued
  ones; global queue indexes, the running, unsent and deferred sets; the tombstones.
- Workers: heartbeats and their index (model/tasks/fleet.py).
- Uploads, imported models, caches, rate limits, fetch slots, metrics, webhook messages: below,
  each with the module that owns it.
"""

from __future__ import annotations

import hashlib

PREFIX = "sc"
QUEUE_KEY = f"{PREFIX}:queued"  # sorted set: id -> submit time, every queued task (backpressure)
RUNNING_KEY = f"{PREFIX}:running"  # set of ids a worker is running
# Sorted set: id -> time, tasks whose run message is not known to be sent yet (created or
# requeued, the send not confirmed). A reaper sends again what stays here
# (model/lifecycle/attempts.py): an API process killed between the record and the message loses
# no task.
UNSENT_KEY = f"{PREFIX}:unsent"
# Sorted set: id -> time, QUEUED tasks a worker took while their key had `running_max` tasks
# running; their message was dropped. Sent again when a task ends (a slot is free), or by the
# reaper as unsent (they are in UNSENT_KEY too).
DEFERRED_KEY = f"{PREFIX}:deferred"
QUEUES_KEY = f"{PREFIX}:queues"  # set of the Celery queues tasks were ever sent to
DURATIONS_PREFIX = f"{PREFIX}:durations:"  # recent run durations (s) per job type, for ETAs
WORKERS_PREFIX = f"{PREFIX}:worker:"  # heartbeats of worker processes with models loaded
ALL_TASKS_KEY = f"{PREFIX}:tasks"  # sorted set of every live task id (admin listing)
# The Celery queue of tasks that name no particular model (model/celery_app.py routes the others;
# with the Redis broker it is a Redis list too). Here rather than in celery_app.py: the task
# core and jobs/train need it, and celery_app imports both (that would be a cycle).
DEFAULT_QUEUE = "scriptorium"


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


def webhook_log_key(task_id: str) -> str:
    """A task's webhook attempts, the last 50 (model/webhooks/events.py)."""
    return f"{PREFIX}:task:{task_id}:webhook"


def share_key(share_id: str) -> str:
    """A share link (model/api/shares.py)."""
    return f"{PREFIX}:share:{share_id}"


def task_shares_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:shares"


def owner_shares_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:shares"


WORKERS_INDEX = f"{PREFIX}:workers"  # sorted set: heartbeat key -> when it lapses

# Uploads (model/uploads.py): one key per file, + "<task id>:<index>".
UPLOAD_PREFIX = f"{PREFIX}:upload:"
UPLOADS_HELD_KEY = f"{PREFIX}:uploads:held"  # hash: task id -> bytes it holds
UPLOADS_HELD_BYTES_KEY = f"{PREFIX}:uploads:held_bytes"  # hash: total, key:<owner> -> bytes

# Imported models (model/inference/catalog.py).
MODELS_PREFIX = f"{PREFIX}:models:"
MODEL_CARDS_KEY = f"{MODELS_PREFIX}cards"
MODELS_VERSION_KEY = f"{MODELS_PREFIX}version"
MODEL_BLOB_PREFIX = f"{MODELS_PREFIX}blob:"

# Caches: detections (model/pipeline/cache.py), features (model/jobs/similarity/cache.py), IIIF
# image-service descriptions (model/iiif/info_cache.py: bump its version when ImageService's
# fields change meaning).
DETECTION_CACHE_PREFIX = f"{PREFIX}:cache:"
DETECTION_CACHE_INDEX_KEY = f"{PREFIX}:cache-index"
FEATURE_CACHE_PREFIX = f"{PREFIX}:simcache:"
FEATURE_CACHE_INDEX_KEY = f"{PREFIX}:simcache-index"
IIIF_INFO_PREFIX = f"{PREFIX}:iiif-info:v1:"

# Rate limits (the `limits` library adds its own LIMITS:LIMITER/ around these namespaces).
RATE_LIMITS_NAMESPACE = f"{PREFIX}:limits"  # model/api/limits.py
AUTH_FAILURES_NAMESPACE = f"{PREFIX}:auth-failures"  # model/api/auth_failures.py

# Polite fetching (model/sources/host_slots.py): + host.
FETCH_SLOTS_PREFIX = f"{PREFIX}:fetch:slots:"
FETCH_LIMIT_PREFIX = f"{PREFIX}:fetch:limit:"  # the limit the processes' limiters reached

# Metrics (model/metrics/record.py): a hash per metric, + name.
METRICS_PREFIX = f"{PREFIX}:metrics:"
METRICS_HOSTS_KEY = f"{PREFIX}:metrics:hosts"

# Webhooks (model/webhooks/events.py).
WEBHOOK_MSG_PREFIX = f"{PREFIX}:webhook:msg:"  # + message id: one event of one task
WEBHOOK_DUE_KEY = f"{PREFIX}:webhook:due"  # sorted set: message id -> when it is next due
WEBHOOK_FLIGHT_PREFIX = f"{PREFIX}:webhook:flight:"  # + owner: attempts in flight
WEBHOOK_BREAKER_PREFIX = f"{PREFIX}:webhook:breaker:"  # + receiver host: its breaker
WEBHOOK_PROGRESS_PREFIX = f"{PREFIX}:webhook:progress:"  # + task id: progress events' gate

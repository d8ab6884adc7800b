"""Every Redis key the task core uses, and how each is named: one place, so no module writes
the `sc:` prefix by hand.

Per task: its record `sc:task:<id>` (a hash), its items `sc:task:<id>:items`, and beside them
what `model.tasks.store` documents; per owner: their tasks and their queued ones; global: the
queue indexes, the running set, the unsent and deferred sets, the heartbeats.
"""

from __future__ import annotations

import hashlib

PREFIX = "sc"
QUEUE_KEY = f"{PREFIX}:queued"  # sorted set: id -> submit time, every queued task (backpressure)
RUNNING_KEY = f"{PREFIX}:running"  # set of ids a worker is running
# Sorted set: id -> time, tasks whose run message is not known to be sent yet (created or
# requeued, the send not confirmed). A reaper sends again what stays here (model/tasks/attempts.py):
# an API process killed between the record and the message loses no task.
UNSENT_KEY = f"{PREFIX}:unsent"
# Sorted set: id -> time, QUEUED tasks a worker took while their key had `running_max` tasks
# running; their message was dropped. Sent again when a task ends (a slot is free), or by the
# reaper as unsent (they are in UNSENT_KEY too).
DEFERRED_KEY = f"{PREFIX}:deferred"
QUEUES_KEY = f"{PREFIX}:queues"  # set of the Celery queues tasks were ever sent to
DURATIONS_PREFIX = f"{PREFIX}:durations:"  # recent run durations (s) per job type, for ETAs
WORKERS_PREFIX = f"{PREFIX}:worker:"  # heartbeats of worker processes with models loaded
ALL_TASKS_KEY = f"{PREFIX}:tasks"  # sorted set of every live task id (admin listing)
# The Celery queue of tasks that name no particular model (model/celery_app.py routes the others).
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

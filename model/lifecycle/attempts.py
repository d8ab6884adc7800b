"""Which attempt runs a task, and its proof that it still does: the task of a dead worker comes
back in about `worker.lost_grace_s` (not after the broker's visibility timeout), and no task runs
to completion twice.

- A pool process that starts a task takes an attempt (`TaskStore.mark_running`, in Lua): the
  record's `attempt` counter goes up, its `holder` becomes the attempt's token
  `<worker name>:<main pid>:<pool pid>:<attempt>`, and `sc:task:<id>:lease` holds that token
  for `lost_grace_s`.
- While it runs the task, the process renews the lease every few seconds (`Attempts.renew`,
  from the worker's heartbeat thread).
- Every write of an attempt — items, provenance, its end — is checked against the holder in
  Lua: an attempt that lost the task (requeued while it was frozen or cut off from Redis) can
  neither emit nor finish; it finds out at its next write or check and stops (`AttemptLost`).
- Every worker's reaper sweeps the running tasks (`requeue_lost`): a task whose lease is gone
  (its worker stopped renewing it for longer than the grace: a host died, a worker was killed
  whole) or still held by a pool process of this same worker that died (at once) goes back to
  QUEUED and its Celery message is sent again, same id and limits; it resumes after its stored
  items. A Redis lock (SET NX PX) keeps the reapers of several workers from both requeueing a
  task; the Lua move checks the holder and lease again anyway. A task that had outlived its hard
  time limit when its worker vanished is ended as TIMED_OUT instead.
- Celery's own redeliveries (a killed pool child's message, the visibility timeout, which stays
  as the last resort) meet the same checks: a message for a task that another live attempt
  holds is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.celery_app import QUEUE, send_run
from model.keyspace import lease_key
from model.tasks.states import State
from model.tasks.store import TaskStore

log = logging.getLogger(__name__)
LOCK_MS = 10_000  # a reaper's claim on requeueing one task
# A run message not confirmed sent this long after its task was queued was lost (the process
# sending it died); a submit sends it within milliseconds.
UNSENT_GRACE_S = 30


class AttemptLost(Exception):
    """This attempt no longer holds its task (it was requeued, or ended by someone else)."""


def lease_ms(settings: Any) -> int:
    return int(settings.worker.lost_grace_s * 1000)


def process_holder(worker_name: str) -> str:
    """Who a pool process's attempts belong to (the attempt number is added in Lua)."""
    return f"{worker_name}:{os.getppid()}:{os.getpid()}"


def own_prefix(worker_name: str, pool_process: bool) -> str:
    """What the tokens of the attempts this process answers for start with: a pool process's
    own; in the worker's main process, those of every process of its pool."""
    if pool_process:
        return process_holder(worker_name) + ":"
    return f"{worker_name}:{os.getpid()}:"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie has died


def died_here(token: str, worker_name: str) -> bool:
    """The token's pool process was one of this worker's (we are its main process) and is
    dead: no need to wait for its lease to lapse."""
    name, main_pid, pid, _attempt = token.rsplit(":", 3)
    return name == worker_name and main_pid == str(os.getpid()) and not _alive(int(pid))


@dataclass
class Attempt:
    task_id: str
    token: str
    lost: threading.Event = field(default_factory=threading.Event)


class Attempts:
    """The attempts one process is running, whose leases it renews."""

    def __init__(self) -> None:
        self._running: dict[str, Attempt] = {}
        self._lock = threading.Lock()

    def begin(self, task_id: str, token: str) -> Attempt:
        attempt = Attempt(task_id, token)
        with self._lock:
            self._running[task_id] = attempt
        return attempt

    def end(self, attempt: Attempt) -> None:
        with self._lock:
            if self._running.get(attempt.task_id) is attempt:
                del self._running[attempt.task_id]

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def renew(self, store: TaskStore, ms: int) -> None:
        with self._lock:
            attempts = list(self._running.values())
        for attempt in attempts:
            if not store.renew_lease(attempt.task_id, attempt.token, ms):
                if not attempt.lost.is_set():
                    log.warning("task %s: attempt %s lost it", attempt.task_id, attempt.token)
                attempt.lost.set()


def _claim(store: TaskStore, task_id: str, action: str, worker_name: str) -> bool:
    """This reaper's claim on doing `action` to a task for LOCK_MS: the reapers of several
    workers must not both do it."""
    lock = f"{lease_key(task_id)}:{action}"
    return bool(store.redis.set(lock, worker_name, nx=True, px=LOCK_MS))


def requeue_lost(
    store: TaskStore, celery: Any, settings: Any, end_timed_out: Any, now: float
) -> list[str]:
    """Requeue the running tasks whose attempt is gone; returns their ids. `end_timed_out(record)`
    ends one that had outlived its hard limit instead (model.lifecycle.ending)."""
    task_ids = store.running_ids()
    requeued = []
    for task_id, (holder, lease) in zip(task_ids, store.holders(task_ids), strict=True):
        if holder is None:
            continue  # started by a release without leases: the visibility timeout covers it
        if lease is not None and not (lease == holder and died_here(holder, settings.worker_name)):
            continue  # alive, or another worker's process whose lease has not lapsed yet
        if not _claim(store, task_id, "requeue", settings.worker_name):
            continue  # another reaper is on it
        record = store.get(task_id)
        if record is None or record.holder != holder:
            continue
        started = record.attempt_started_at or now
        if now > started + settings.hard_limit_s(record.timeout_s):
            end_timed_out(record)
            continue
        if store.requeue(task_id, holder, lease):
            send_run(celery, settings, task_id, record.timeout_s, record.queue or QUEUE)
            store.mark_sent(task_id)
            log.warning(
                "task %s: %s is gone (%s); requeued to %s",
                task_id,
                holder,
                "its process died" if lease else f"no lease for {settings.worker.lost_grace_s} s",
                record.queue,
            )
            requeued.append(task_id)
    return requeued


def release_deferred(store: TaskStore, celery: Any, settings: Any) -> str | None:
    """A task has ended, a worker slot is free: send again the task deferred longest ago
    because its key was at its cap (it may be deferred again); returns its id."""
    while (task_id := store.pop_deferred()) is not None:
        record = store.get(task_id)
        if record is not None and record.state == State.QUEUED:
            send_run(
                celery, settings, task_id, record.timeout_s, record.queue or QUEUE, record.lane
            )
            store.mark_sent(task_id)
            return task_id
    return None


def resend_unsent(store: TaskStore, celery: Any, settings: Any, now: float) -> list[str]:
    """Send again the run message of each QUEUED task whose send was never confirmed (an API
    process or a reaper killed between the record and the message); returns their ids. A
    message that was in fact sent makes a duplicate, which the worker drops (one attempt)."""
    resent = []
    for task_id in store.unsent_since(now - UNSENT_GRACE_S):
        if not _claim(store, task_id, "resend", settings.worker_name):
            continue  # another reaper is on it
        record = store.get(task_id)
        if record is not None and record.state == State.QUEUED:  # in the lane it was given
            send_run(
                celery, settings, task_id, record.timeout_s, record.queue or QUEUE, record.lane
            )
            log.warning("task %s: its run message was never confirmed sent; sent again", task_id)
            resent.append(task_id)
        store.mark_sent(task_id)
    return resent

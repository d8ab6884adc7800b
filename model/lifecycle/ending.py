"""Ending a task: the one place that moves a task to a terminal state and deletes its inputs.

The job's own runner, the reaper (an ignored cancel), Celery's failure signal (a time limit or
anything else that escaped the job), a DELETE of a queued task and a failed enqueue all end
tasks through `end_task`; the store makes sure only the first of them counts.
"""

from __future__ import annotations

import logging
import time

from billiard.exceptions import WorkerLostError
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from model.redis_client import unreachable
from model.services import meter_of
from model.tasks.states import State
from model.tasks.store import TaskStore
from model.uploads import UploadStore
from model.webhooks.events import task_ended

log = logging.getLogger(__name__)


def timeout_error(timeout_s: float) -> tuple[str, str]:
    return ("timeout", f"task exceeded its time limit of {timeout_s:g} s")


def internal_error(task_id: str) -> tuple[str, str]:
    # The traceback goes to the worker log with the task id; the client gets a code only.
    return ("internal_error", f"the job failed unexpectedly; worker logs name task {task_id}")


def end_task(
    store: TaskStore,
    uploads: UploadStore,
    task_id: str,
    state: State,
    error: tuple[str, str] | None = None,
    only_from: list[State] | None = None,
    holder: str | None = None,
    worker: str | None = None,
    **extra: float,
) -> bool:
    """End an active task once (False: it had already ended, or `holder`/`worker` no longer
    holds it: see TaskStore.finish) and delete its uploads."""
    ended = store.finish(task_id, state, error, only_from, holder, worker, **extra)
    if ended:
        uploads.discard(task_id, store.spec_of(task_id))
        announce_end(store, task_id)
    return ended


def announce_end(store: TaskStore, task_id: str) -> None:
    """What follows a task's end, once: it is counted, its `completed` webhook is queued. Never
    raises: the task has ended whatever happens here (a lost message is queued again by the
    outbox)."""
    try:
        record = store.get(task_id)
        if record is not None:
            meter_of(store.redis).task_finished(record.type, record.state.value)
            task_ended(store, record)
    except Exception:
        log.warning("the end of task %s was not announced", task_id, exc_info=True)


def cancel_task(store: TaskStore, uploads: UploadStore, task_id: str) -> State | None:
    """A queued task ends at once (it never starts); a running one gets the flag its job checks
    (the reaper kills it if it ignores the flag). Returns the state the task was in, None if it
    had already ended or does not exist."""
    record = store.get(task_id)
    if record is None or record.state.terminal:
        return None
    now = time.time()
    if record.state == State.QUEUED and end_task(
        store,
        uploads,
        task_id,
        State.CANCELLED,
        only_from=[State.QUEUED],
        cancel_requested_at=now,
    ):
        return State.QUEUED
    # Running, or it started since we looked.
    return State.RUNNING if store.flag_cancel(task_id) else None


def end_after_failure(
    store: TaskStore,
    uploads: UploadStore,
    task_id: str,
    exception: BaseException | None,
    worker: str | None = None,
) -> State | None:
    """A task whose Celery message ended in an exception (time limits, or anything that escaped
    the runner): end its record, else it would stay QUEUED or RUNNING with no message left. A
    lost worker process is the exception: its message is redelivered and the task resumes. So
    is Redis out of reach: not the task's fault (a running task is requeued once it is back).
    `worker` (a holder prefix): only if one of that worker's attempts holds the task, or none
    ever started — not a task requeued away from a stale attempt of ours. Returns the state it
    was ended in (None: nothing to do)."""
    if isinstance(exception, WorkerLostError) or unreachable(exception):
        return None
    record = store.get(task_id)
    if record is None or record.state.terminal:
        return None
    if isinstance(exception, TimeLimitExceeded | SoftTimeLimitExceeded):
        state, error = State.TIMED_OUT, timeout_error(record.timeout_s)
    else:
        state, error = State.FAILED, internal_error(task_id)
    return state if end_task(store, uploads, task_id, state, error, worker=worker) else None

"""Runs one task in the worker: state transitions around a job, whatever way the job ends.

Jobs know nothing of Redis or Celery: they get a JobContext (model/jobs/context.py) to emit
per-item results, publish provenance, read a source task and check for cancellation. Every
write goes through the attempt that started the task (model/lifecycle/attempts.py): once
another attempt holds it, this one can neither emit nor finish.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from model.jobs import JobCancelled, JobFailed
from model.jobs.context import SourceResult
from model.jobs.contract import TaskSpec, WorkerResources
from model.jobs.items import ResultItem
from model.jobs.spec import JobSpec
from model.lifecycle.attempts import Attempt, AttemptLost, Attempts, lease_ms, process_holder
from model.lifecycle.ending import end_task, internal_error, timeout_error
from model.metrics.record import Meter
from model.redis_client import unreachable
from model.services import meter_of
from model.tasks.record import TaskRecord
from model.tasks.states import DEFERRED, State
from model.tasks.store import TaskStore
from model.webhooks.events import ProgressEvents

log = logging.getLogger(__name__)

# The attempts this process runs: the worker's heartbeat thread renews their leases.
ATTEMPTS = Attempts()


# The states in which another task's result may be read (it ran to its end, whole or partial).
_READABLE = (State.SUCCEEDED, State.TIMED_OUT, State.CANCELLED)


@dataclass
class TaskContext:
    """The runner's JobContext (model/jobs/context.py): what a running job may touch. The store
    stays behind it: every write names the attempt, so a superseded one can write nothing."""

    record: TaskRecord
    _store: TaskStore
    resources: WorkerResources  # loaded models, fetcher, settings: lent by the worker
    spec: TaskSpec
    attempt: Attempt
    _finished: set[int] = field(default_factory=set)
    _progress: ProgressEvents | None = None  # the task's `progress` webhook events, if asked
    meter: Meter | None = None  # pages, stages, batches (model/metrics/)
    _sources: set[str] = field(default_factory=set)  # tasks read with source()

    def __post_init__(self) -> None:
        self._progress = ProgressEvents.of(self.record, self._store)
        self.meter = self.meter or meter_of(self._store.redis)

    @property
    def task_id(self) -> str:
        return self.record.id

    def _held(self, written: bool) -> None:
        if not written:
            self.attempt.lost.set()
            raise AttemptLost(self.attempt.token)

    def _holds(self) -> bool:
        """Still this attempt's task (for writes the store does not check themselves; an
        attempt superseded between the check and the write keeps what the next one keeps)."""
        holder, _lease = self._store.holders([self.task_id])[0]
        return not self.attempt.lost.is_set() and holder == self.attempt.token

    def finished_indices(self) -> set[int]:
        if not self._finished:
            self._finished = {item["index"] for item in self._store.items(self.task_id)}
        return self._finished

    def failed_count(self) -> int:
        return sum(1 for i in self._store.items(self.task_id) if i.get("status") != "ok")

    def check_cancel(self) -> None:
        if self.attempt.lost.is_set():
            raise AttemptLost(self.attempt.token)
        if self._store.is_cancel_requested(self.task_id):
            raise JobCancelled()

    def emit(self, item: ResultItem, failed: bool = False) -> None:
        stored = item.stored()
        self._held(self._store.add_item(self.task_id, stored, failed, self.attempt.token))
        if self.meter is not None:
            self.meter.item_done(self.record.type, stored, failed)
        if self._progress is not None:
            self._progress.item_done()

    def set_provenance(self, provenance: dict[str, Any]) -> None:
        self._held(self._store.set_provenance(self.task_id, provenance, self.attempt.token))

    def set_summary(self, summary: dict[str, Any]) -> None:
        self._held(self._store.set_summary(self.task_id, summary, self.attempt.token))

    def set_total(self, total: int) -> None:
        self._held(self._store.set_total(self.task_id, total, self.attempt.token))

    def source(self, task_id: str, types: tuple[str, ...]) -> SourceResult:
        record = self._store.get(task_id)
        if record is None or record.owner != self.record.owner:
            # Another key's task is no more visible here than through the API.
            raise JobFailed("source_not_found", f"no task {task_id} of this key")
        if record.type not in types or record.state not in _READABLE:
            raise JobFailed(
                "source_unusable",
                f"task {task_id} is a {record.type} task in state {record.state.value};"
                f" {self.record.type} needs a finished {' or '.join(types)} task",
            )
        self._sources.add(task_id)
        items = sorted(self._store.items(task_id), key=lambda item: item["index"])
        provenance = self._store.full_provenance(record) or {}
        return SourceResult(task_id, record.type, items, provenance)

    def _lifetime_s(self) -> float:
        """How long what the task keeps must last if it never finishes (finish shortens it)."""
        return self.resources.settings.hard_limit_s(self.record.timeout_s)

    def keep_manifest(self, index: int, document: str) -> None:
        self._held(self._holds())
        self._store.keep_manifest(self.task_id, index, document, self._lifetime_s())

    def kept_manifest(self, task_id: str, index: int) -> str | None:
        if task_id != self.task_id and task_id not in self._sources:
            raise ValueError(f"task {task_id} was not read with source()")
        return self._store.kept_manifest(task_id, index)

    def keep_file(self, name: str, data: bytes) -> None:
        self._held(self._holds())
        self._store.keep_file(self.task_id, name, data, self._lifetime_s())


def run_task(
    task_id: str,
    store: TaskStore,
    resources: WorkerResources,
    jobs: dict[str, JobSpec] | None = None,
) -> State | None:
    """Run a task to a terminal state; returns the state it ended in (None: nothing to do, or
    another attempt holds the task now)."""
    uploads, settings = resources.uploads, resources.settings
    record = store.get(task_id)
    if record is None or record.state.terminal:
        return None  # cancelled while queued, or expired: never starts
    if record.cancel_requested_at is not None:
        end_task(store, uploads, task_id, State.CANCELLED)
        return State.CANCELLED
    holder = process_holder(settings.worker_name)
    token = store.mark_running(task_id, os.getpid(), holder, lease_ms(settings))
    if token == DEFERRED:
        log.info("task %s: its key has its running tasks' cap; deferred", task_id)
        return None
    if token is None:
        log.info("task %s: held by a live attempt elsewhere; this delivery is a duplicate", task_id)
        return None
    attempt = ATTEMPTS.begin(task_id, token)
    state, error = State.SUCCEEDED, None
    try:
        job = (jobs if jobs is not None else _registry())[record.type]
        spec = TaskSpec.model_validate(record.spec)
        # However long it waited, its uploads now live as long as its run may last.
        uploads.refresh(spec, settings.upload_ttl_s(record.timeout_s))
        job.run(TaskContext(record, store, resources, spec, attempt))
    except AttemptLost:
        log.warning(
            "task %s: attempt %s was superseded; stopping without ending it", task_id, token
        )
        return None
    except JobCancelled:
        state = State.CANCELLED
    except SoftTimeLimitExceeded:
        state, error = State.TIMED_OUT, timeout_error(record.timeout_s)
    except JobFailed as exc:
        state, error = State.FAILED, (exc.code, exc.message)
    except Exception as exc:
        if unreachable(exc):
            # Redis was away longer than the clients' patience: the task is not at fault. Its
            # lease lapses (no renewals from here on) and a reaper requeues it; it resumes
            # after its stored items.
            log.warning("task %s: Redis unreachable; left to be requeued", task_id, exc_info=True)
            return None
        log.exception("task %s failed", task_id)
        state, error = State.FAILED, internal_error(task_id)
    finally:
        ATTEMPTS.end(attempt)
    return state if end_task(store, uploads, task_id, state, error, holder=token) else None


def _registry() -> dict[str, JobSpec]:
    from model.jobs.registry import JOBS

    return JOBS

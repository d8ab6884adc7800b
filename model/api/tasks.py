"""GET /status/<id>, DELETE /terminate/<id>: thin views over the task store (POST /task is in
model/api/submit.py)."""

from __future__ import annotations

import re
from typing import Any

from flask import Response, current_app, g
from flask_openapi3 import APIBlueprint, Tag

from model.api.auth import SECURITY, is_admin, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse
from model.api.limits import queue_count
from model.api.schemas import (
    TASK_ID_PATTERN,
    Progress,
    TaskPath,
    TaskResult,
    TaskStatus,
    WebhookStatus,
    timestamp,
)
from model.api.services import Services, services
from model.lifecycle.ending import cancel_task
from model.outputs.annotations import ResultLinks
from model.outputs.cluster import with_links
from model.tasks import fleet
from model.tasks.eta import start_in_s, time_left_s
from model.tasks.record import TaskRecord
from model.tasks.states import State
from model.webhooks.events import deliveries

tag = Tag(name="tasks", description="Submit, poll and stop jobs")
api = APIBlueprint(
    "tasks", __name__, abp_tags=[tag], abp_security=SECURITY, abp_responses=COMMON_RESPONSES
)
api.before_request(require_key)

ERRORS: dict[Any, Any] = {
    status: ErrorResponse for status in (400, 401, 404, 410, 413, 415, 422, 429, 503)
}
RETRY_AFTER_S = "1"


WITH_ITEMS = (State.SUCCEEDED, State.TIMED_OUT, State.CANCELLED)  # states that show a result


def _owned_record(svc: Services, task_id: str) -> TaskRecord:
    """The caller's task; another key's task is indistinguishable from an unknown one."""
    well_formed = re.fullmatch(TASK_ID_PATTERN, task_id) is not None
    return _check_owner(svc, task_id, svc.store.get(task_id) if well_formed else None)


def _owned_snapshot(svc: Services, task_id: str) -> tuple[TaskRecord, list[dict] | None, int]:
    """The caller's task and, once it has ended, its first items and their count: one Redis
    round trip (a 10,000-page task's status reads `results.status_max_items` of them)."""
    well_formed = re.fullmatch(TASK_ID_PATTERN, task_id) is not None
    record, items, count = _read_snapshot(svc, task_id) if well_formed else (None, None, 0)
    return _check_owner(svc, task_id, record), items, count


def _read_snapshot(svc: Services, task_id: str) -> tuple[TaskRecord | None, list | None, int]:
    """The snapshot and the request's rate-limit count (left to this view by the limiter's
    hook) in one round trip: 429 first when the key is over its limit."""
    with svc.redis.pipeline(transaction=False) as pipe:
        settle = queue_count(pipe)
        read = svc.store.queue_snapshot(
            pipe, task_id, WITH_ITEMS, svc.settings.results.status_max_items
        )
        replies = pipe.execute(raise_on_error=False)
    settle(replies)
    return read(replies[-1])


def _check_owner(svc: Services, task_id: str, record: TaskRecord | None) -> TaskRecord:
    well_formed = re.fullmatch(TASK_ID_PATTERN, task_id) is not None
    if record is not None and (record.owner == g.owner or is_admin()):
        return record
    if record is None and well_formed and svc.store.expired_owner(task_id) == g.owner:
        raise ApiError(410, "expired", "this task's result has expired and was deleted")
    raise ApiError(404, "not_found", "no such task")


def _status_body(
    svc: Services, record: TaskRecord, items: list[dict] | None = None, count: int = 0
) -> TaskStatus:
    result = None
    if record.state in WITH_ITEMS:
        if items is None:
            limit = svc.settings.results.status_max_items
            items, count = svc.store.item_page(record.id, 0, limit)
        items = sorted(items, key=lambda item: item["index"])
        more = {}
        if count > len(items):  # the rest page by page: the status of a big task stays small
            more = {
                "items_total": count,
                "items_next": f"/result/{record.id}?offset={len(items)}&limit={len(items)}",
            }
        summary = record.summary or {}
        if record.type == "cluster" and summary:  # the families' prototype URLs
            public = svc.settings.http.public_base_url()
            summary = with_links(summary, ResultLinks.of_task(public, record.id))
        result = TaskResult(items=items, provenance=record.provenance, **more, **summary)
    position = eta = None
    if record.state == State.QUEUED:
        # Per queue: a task naming a model waits only behind tasks of its own queue, and only
        # the live workers taking that queue (on every host) work it off.
        rank = svc.store.queue_position(record)
        position = None if rank is None else rank + 1
        mean = svc.store.mean_duration_s(record.type)
        if position is not None and mean is not None:
            # Every slot busy for the mean duration, at least; and what the running tasks are
            # doing counts: one stuck on a trickling host holds its worker long after the mean.
            serving = max(1, fleet.serving(fleet.live(svc.redis), record.queue))
            left = [
                time_left_s(finished, total, running_s, mean)
                for finished, total, running_s in svc.store.running_progress(record.queue)
            ]
            eta = round(
                max(mean * position / serving, start_in_s(position, serving, left, mean)), 2
            )
    error = None
    if record.error_code:
        error = {"code": record.error_code, "message": record.error_message or ""}
    return TaskStatus(
        task_id=record.id,
        type=record.type,
        state=record.state,
        progress=Progress(done=record.done, total=record.total, failed=record.failed),
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        expires_at=timestamp(record.expires_at),
        result=result,
        error=error,
        queue_position=position,
        eta_s=eta,
        webhook=_webhook_status(svc, record),
        warnings=(record.provenance or {}).get("warnings") or None,
    )


def _webhook_status(svc: Services, record: TaskRecord) -> WebhookStatus | None:
    """The task's webhook and its delivery attempts (one more read, for such tasks only)."""
    if not record.webhook:
        return None
    return WebhookStatus(**record.webhook, deliveries=deliveries(svc.redis, record.id))


def _status_response(body: TaskStatus, status: int | None = None) -> Response:
    # Serialised by pydantic-core in one step (as jsonify would: compact, ASCII, a final
    # newline), not dumped to dicts for the json module: a fifth of /status's own CPU
    # (bench/README.md). Only float notation can differ: 0.00005 where json wrote 5e-05.
    response = current_app.response_class(
        body.model_dump_json(ensure_ascii=True) + "\n", mimetype="application/json"
    )
    active = not body.state.terminal
    response.status_code = status or (202 if active else 200)
    if active:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


@api.get("/status/<task_id>", responses={200: TaskStatus, 202: TaskStatus, **ERRORS})
def task_status(path: TaskPath) -> Response:
    """State, progress and (when finished) result of a task: 202 while active, 200 when done."""
    svc = services()
    record, items, count = _owned_snapshot(svc, path.task_id)
    return _status_response(_status_body(svc, record, items, count))


@api.delete("/terminate/<task_id>", responses={200: TaskStatus, 202: TaskStatus, **ERRORS})
def terminate_task(path: TaskPath) -> Response:
    """Stop a task: 202 while it is being cancelled, 200 (unchanged) if it had already ended."""
    svc = services()
    record = _owned_record(svc, path.task_id)
    if record.state.terminal:
        return _status_response(_status_body(svc, record), 200)
    cancel_task(svc.store, svc.uploads, record.id)
    latest = svc.store.get(record.id) or record
    return _status_response(_status_body(svc, latest), 202)

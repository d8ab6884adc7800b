"""GET /tasks: the caller's own tasks (an admin key may ask for everyone's), newest first."""

from __future__ import annotations

from typing import Literal

from flask import Response, g, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from model.api.auth import SECURITY, is_admin, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse
from model.api.schemas import Progress, timestamp
from model.api.services import services
from model.tasks.record import TaskRecord
from model.tasks.states import State

api = APIBlueprint(
    "listing",
    __name__,
    abp_tags=[Tag(name="tasks")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(require_key)


class ListQuery(BaseModel):
    state: State | None = Field(None, description="Only tasks in this state")
    offset: int = Field(0, ge=0, le=1_000_000)
    limit: int = Field(20, ge=1, le=100)
    scope: Literal["mine", "all"] = Field("mine", description="'all' needs an admin key")


class TaskSummary(BaseModel):
    task_id: str
    owner: str
    type: str
    state: State
    progress: Progress
    created_at: str | None
    finished_at: str | None


class TaskPage(BaseModel):
    tasks: list[TaskSummary]
    total: int
    offset: int
    limit: int
    next_offset: int | None


def _summary(record: TaskRecord) -> dict:
    created, finished = timestamp(record.created_at), timestamp(record.finished_at)
    return TaskSummary(
        task_id=record.id,
        owner=record.owner,
        type=record.type,
        state=record.state,
        progress=Progress(done=record.done, total=record.total, failed=record.failed),
        created_at=created.isoformat() if created else None,
        finished_at=finished.isoformat() if finished else None,
    ).model_dump(mode="json")


@api.get("/tasks", responses={200: TaskPage, 401: ErrorResponse, 403: ErrorResponse})
def list_tasks(query: ListQuery) -> Response:
    """List tasks, paginated with offset/limit, optionally filtered by state."""
    if query.scope == "all" and not is_admin():
        raise ApiError(403, "forbidden", "scope=all needs an admin key")
    owner = None if query.scope == "all" else g.owner
    records, total = services().store.list(owner, query.state, query.offset, query.limit)
    after = query.offset + len(records)
    return jsonify(
        {
            "tasks": [_summary(r) for r in records],
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
            "next_offset": after if after < total else None,
        }
    )

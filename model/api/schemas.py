"""Request and response bodies of the public API (they generate the OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model

from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.store import State

TASK_ID_PATTERN = r"[0-9a-f]{32}"
# A shorter limit would fire inside the worker's own bookkeeping, before the job even starts.
MIN_TIMEOUT_S = 1.0


class TaskError(BaseModel):
    code: str
    message: str


_TIMEOUT_DESCRIPTION = "Soft time limit in seconds (at least 1, at most the job type's maximum)"

# Strict: a JSON number, never `true` or "30" (a multipart timeout is converted before).
Timeout = Annotated[float | None, Strict()]


def request_model(spec: JobSpec) -> type[BaseModel]:
    """The JSON body of POST /task for one job type (multipart carries the same fields)."""
    if spec.input_required:
        input_field: Any = (spec.input, Field(description=f"What the {spec.name} job works on"))
    else:
        input_field = (spec.input, Field(default_factory=spec.input))
    return create_model(
        f"{spec.name.title()}Request",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"POST /task body of a {spec.name} task",
        type=(Literal[spec.name], Field(description=spec.summary)),  # type: ignore[valid-type]
        input=input_field,
        params=(spec.params, Field(default_factory=spec.params)),
        timeout=(Timeout, Field(None, ge=MIN_TIMEOUT_S, description=_TIMEOUT_DESCRIPTION)),
    )


# The request model of each job type: the body's `type` picks one.
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    name: request_model(spec) for name, spec in JOBS.items()
}


class TaskPath(BaseModel):
    task_id: str = Field(description="Task id returned by POST /task")


class TaskCreated(BaseModel):
    task_id: str
    state: State
    status_url: str
    terminate_url: str
    expires_at: datetime | None = None


class Progress(BaseModel):
    done: int
    total: int
    failed: int


class Detection(BaseModel):
    xywh: list[int] = Field(
        description="x, y, width, height: in canvas coordinates for IIIF canvases, else in the "
        "original image's pixels"
    )
    confidence: float
    label: str


class ResultItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    source: str
    status: Literal["ok", "failed"]
    width: int | None = None
    height: int | None = None
    detections: list[Detection] = []
    error: TaskError | None = None
    timings: dict[str, float] | None = None
    # IIIF canvases only:
    canvas_id: str | None = None
    label: str | None = None
    manifest: int | None = Field(None, description="Index of the manifest in provenance")
    image_url: str | None = Field(None, description="Image request sent (size negotiated)")
    canvas_width: int | None = None
    canvas_height: int | None = None


class TaskResult(BaseModel):
    """Items (one per image or canvas) and provenance; a similarity task adds `pairs` (one per
    pair of documents: its top-k item pairs, best first) and `comparison` ({done, total})."""

    model_config = ConfigDict(extra="allow")

    items: list[ResultItem]
    provenance: dict[str, Any] | None = None


class TaskStatus(BaseModel):
    task_id: str
    type: str
    state: State
    progress: Progress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    result: TaskResult | None = Field(
        None, description="When SUCCEEDED; partial when TIMED_OUT or CANCELLED"
    )
    error: TaskError | None = None
    queue_position: int | None = Field(None, description="1 = next to run (QUEUED only)")
    eta_s: float | None = Field(None, description="Estimated wait before it runs (QUEUED only)")


class ModelDescription(BaseModel):
    name: str
    task: str
    classes: list[str]
    input_size: int
    sha256: str
    default: bool
    backends: list[str]


class ModelList(BaseModel):
    models: list[ModelDescription]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    redis: bool
    workers: list[dict[str, Any]]
    queued: int = Field(description="Tasks waiting for a worker")
    running: int = Field(description="Tasks a worker is running")


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)

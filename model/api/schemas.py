"""Request and response bodies of the public API (they generate the OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    Strict,
    TypeAdapter,
    create_model,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from model.jobs.cluster import RESULT_SCHEMA as CLUSTER
from model.jobs.registry import JOBS
from model.jobs.similarity import Comparison, DocumentPair
from model.jobs.spec import JobSpec
from model.settings import JobLimits
from model.tasks.states import State
from model.urls import HTTP_URL_PATTERN, check_http_url

TASK_ID_PATTERN = r"[0-9a-f]{32}"
# A shorter limit would fire inside the worker's own bookkeeping, before the job even starts.
MIN_TIMEOUT_S = 1.0


class TaskError(BaseModel):
    code: str
    message: str


_TIMEOUT_DESCRIPTION = "Soft time limit in seconds (at least 1, at most the job type's maximum)"

# Strict: a JSON number, never `true` or "30" (a multipart timeout is converted before).
Timeout = Annotated[float | None, Strict()]


WEBHOOK_EVENTS = ("completed", "progress")
MAX_WEBHOOK_URL = 2048


class Webhook(BaseModel):
    """Where to POST this task's events, signed as Standard Webhooks (`webhook-id`,
    `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
    `id.timestamp.body`) with your key's webhook secret (`whsec_...`, from the operator).
    `completed` is sent once the task is in any terminal state, retried with exponential backoff
    until delivered (for up to a day); `progress` at most every `progress_interval_s` while it
    runs, sent once. The URL must be http(s) and reach a public address: an IP address that is
    not public is refused here (422 `webhook_refused`), a host name is resolved, and every
    address checked, at each delivery. Redirects are not followed; a 2xx answer is a delivery.
    Each attempt is listed in the task's status (`webhook.deliveries`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        description="http(s) URL the events are POSTed to",
        max_length=MAX_WEBHOOK_URL,
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
    )
    events: list[Literal["completed", "progress"]] = Field(
        default_factory=lambda: ["completed"],
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="completed: the task ended (any terminal state); progress: pages done",
        json_schema_extra={"uniqueItems": True},
    )
    progress_interval_s: float = Field(
        30,
        gt=0,
        le=86_400,
        description="progress events at most this often (at least webhooks.min_progress_interval_s"
        " of the server's settings)",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        check_http_url(url)
        return url

    @field_validator("events")
    @classmethod
    def _distinct(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("events are listed once each")
        return events


_WEBHOOK_DESCRIPTION = "Where to POST the task's events (see the Webhook schema)"


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
        params=(spec.params, Field(description=f"How to run the {spec.name} job"))
        if spec.params_required
        else (spec.params, Field(default_factory=spec.params)),
        timeout=(Timeout, Field(None, ge=MIN_TIMEOUT_S, description=_TIMEOUT_DESCRIPTION)),
        # Every job type takes one: declared here, not in each job.
        webhook=(Webhook | None, Field(None, description=_WEBHOOK_DESCRIPTION)),
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


class _Stored:
    """A value served as the worker stored it (validated by its model when the job made it),
    documented in the OpenAPI document by that model's schema."""

    def __init__(self, documented: Any) -> None:
        self.documented = documented

    def __get_pydantic_core_schema__(self, _source: Any, _handler: Any) -> CoreSchema:
        return core_schema.any_schema()

    def __get_pydantic_json_schema__(
        self, _schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(TypeAdapter(self.documented).core_schema)


# One item's fields are those of its task type's item model (JobSpec.item).
_ITEM_MODELS = tuple(dict.fromkeys(spec.item for spec in JOBS.values()))
StoredItems = Annotated[list[dict[str, Any]], _Stored(list[Union[_ITEM_MODELS]])]  # type: ignore[valid-type]  # noqa: UP007


class TaskResult(BaseModel):
    """Items (one per image, canvas, region or epoch: the model of the task's type) and
    provenance; a similarity task adds `pairs` and `comparison`; a cluster task `clusters`,
    `unclustered` and `clustering`; an evaluate task `evaluation`."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra=lambda schema: schema["properties"].update(CLUSTER)
    )

    items: StoredItems = Field(
        description="Every item, or in a task of more than results.status_max_items (500) the "
        "first ones stored: then items_total and items_next are set"
    )
    provenance: dict[str, Any] | None = None
    items_total: int | None = Field(None, description="Items of the task, when not all shown")
    items_next: str | None = Field(
        None, description="Where the rest begins: GET /result/<id>?offset=&limit= (paged)"
    )
    # Set by one job type only: left out of the other types' results.
    pairs: Annotated[Any, _Stored(list[DocumentPair])] = Field(
        None,
        description="similarity tasks: one per pair of documents, as each is done",
        exclude_if=lambda value: value is None,
    )
    comparison: Annotated[Any, _Stored(Comparison)] = Field(
        None,
        description="similarity tasks: pairs of documents compared so far",
        exclude_if=lambda value: value is None,
    )


class TaskWarning(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="canvas_limit: canvases left out by iiif.max_canvases")
    message: str
    count: int = Field(description="How many pages were left out")


class WebhookDelivery(BaseModel):
    event: str
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt")
    attempt: int
    at: datetime
    status_code: int | None = Field(None, description="The receiver's answer; null: none came")
    outcome: str = Field(
        description="delivered; failed (retried at next_retry_at if set); gave_up (no retry "
        "left); refused (address not allowed: never retried); skipped (task already ended)"
    )
    error: TaskError | None = None
    duration_s: float
    next_retry_at: datetime | None = None


class WebhookStatus(BaseModel):
    url: str
    events: list[str]
    progress_interval_s: float | None = None
    deliveries: list[WebhookDelivery] = Field(
        default_factory=list, description="Attempts, oldest first (the last 50)"
    )


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
    webhook: WebhookStatus | None = Field(None, description="When the task has a webhook")
    warnings: list[TaskWarning] | None = Field(
        None, description="What a limit cut from the task (it still succeeds): e.g. canvases"
    )


class ModelDescription(BaseModel):
    name: str
    task: str
    classes: list[str]
    input_size: int
    sha256: str
    default: bool
    backends: list[str]
    workers: int = Field(0, description="Live worker processes that have it loaded, all hosts")
    hosts: list[str] = Field([], description="Names of the workers that have it loaded")
    devices: list[str] = Field([], description="Where they run it: cpu, cuda:0...")
    imported: bool = Field(
        False,
        description="Imported with `models add`: every worker host loads it (docs/models.md)",
    )
    owner: str | None = Field(
        None,
        description="The key whose model it is (only that key sees and uses it); null: every key's",
    )


class ModelList(BaseModel):
    models: list[ModelDescription]


class JobType(BaseModel):
    """A registered job type (model/jobs/registry.py): what it does, where it is documented,
    its limits on this installation, and its schemas in the OpenAPI document."""

    name: str = Field(description="The request's `type`")
    summary: str
    docs: str = Field(description="Its documentation: a page (and section) of the source tree")
    limits: JobLimits = Field(description="Time limits (s) and images per task, as configured")
    uploads: bool = Field(description="Takes images or manifests uploaded (multipart)")
    source_task_types: list[str] = Field(
        description="Types of another task (finished, of the same key) its input may name"
    )
    params_schema: str = Field(description="Its `params` in the OpenAPI document")
    input_schema: str = Field(description="Its `input` in the OpenAPI document")
    item_schema: str = Field(description="Its result items in the OpenAPI document")


class JobTypeList(BaseModel):
    jobs: list[JobType]


class Health(BaseModel):
    status: str


class QueueLoad(BaseModel):
    queued: int
    workers: int = Field(description="Tasks the live workers taking this queue run at once")


class Readiness(BaseModel):
    status: str
    redis: bool
    workers: list[dict[str, Any]] = Field(
        description="Heartbeats of live worker processes; `role` is the supervisor program "
        "(`worker` runs tasks, `train-worker` the training queue) and `name` the host's worker name"
    )
    queued: int = Field(description="Tasks waiting for a worker, all queues")
    running: int = Field(description="Tasks a worker is running")
    queues: dict[str, QueueLoad]


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)

"""The contract between the API and the worker, as data (like Cog's eventtypes): what a task
asks for (`TaskSpec`: params and typed inputs, stored in the task record and read back by the
worker) and what the worker lends a running job (`WorkerResources`).

The API builds a TaskSpec, the store keeps it as JSON, the worker validates it back into the same
models: no dict with string keys is built in one place and taken apart in another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the worker's side: none of it is imported here (the HTTP process reads this)
    from redis import Redis

    from model.inference.detector import YoloDetector
    from model.jobs.context import UploadReader
    from model.jobs.similarity.embedders import Embedders
    from model.settings import Settings
    from model.sources.fetch import SafeFetcher
    from model.tasks.store import TaskStore


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageUrl(_Input):
    kind: Literal["image_url"] = "image_url"
    url: str


class _Upload(_Input):
    """A file sent with the task: `key` names it in Redis (model/uploads.py), where any worker
    host reads it; it is deleted when the task ends. `path` is what releases before that stored:
    a file under <data_dir>/uploads/<task id>/ on the API host (a task queued across the
    upgrade still runs). Exactly one of the two."""

    key: str | None = None
    path: str | None = None
    filename: str = ""

    @model_validator(mode="after")
    def _one_place(self) -> _Upload:
        if (self.key is None) == (self.path is None):
            raise ValueError("an upload has either a key or a (legacy) path")
        return self


class ImageUpload(_Upload):
    kind: Literal["image_upload"] = "image_upload"


class ManifestUrl(_Input):
    kind: Literal["manifest_url"] = "manifest_url"
    url: str


class ManifestUpload(_Upload):
    kind: Literal["manifest_upload"] = "manifest_upload"


class DatasetUpload(_Upload):
    """A YOLO dataset as a zip (images and their label .txt files): evaluate's ground truth."""

    kind: Literal["dataset_upload"] = "dataset_upload"


class Annotations(_Input):
    """IIIF annotation pages or lists sent inline with the task (evaluate's ground truth)."""

    kind: Literal["annotations"] = "annotations"
    documents: list[Any]


class AnnotationUrl(_Input):
    kind: Literal["annotation_url"] = "annotation_url"
    url: str


class Document(_Input):
    """A named IIIF manifest or collection to compare (similarity)."""

    kind: Literal["document"] = "document"
    name: str
    url: str


class SourceTask(_Input):
    """Another task of the same owner whose result this one works on (crops)."""

    kind: Literal["task"] = "task"
    task_id: str


class DatasetUrl(_Input):
    """A YOLO dataset zip to train on (train)."""

    kind: Literal["dataset_url"] = "dataset_url"
    url: str


TaskInput = Annotated[
    ImageUrl
    | ImageUpload
    | ManifestUrl
    | ManifestUpload
    | DatasetUpload
    | Annotations
    | AnnotationUrl
    | Document
    | SourceTask
    | DatasetUrl,
    Field(discriminator="kind"),
]

TASK_ID_PATTERN = r"^[0-9a-f]{32}$"


class DetectTaskRequest(BaseModel):
    """A request input naming one finished detect task of the same key (crops, labels).

    Each job subclasses it under its own name: the OpenAPI document names schemas by class."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: str = Field(
        pattern=TASK_ID_PATTERN, description="A finished detect task of the same API key"
    )

    def task_inputs(self) -> list[TaskInput]:
        return [SourceTask(task_id=self.task_id)]


# Inputs stored by releases before the typed contract: {"url"}, {"upload", "filename"},
# {"manifest_url"}, {"manifest_upload", "filename"}, {"document", "manifest_url"}. A task queued
# across an upgrade still runs (uploads then were files on the API host: a `path`).
_LEGACY_KINDS = (
    ("document", lambda e: {"kind": "document", "name": e["document"], "url": e["manifest_url"]}),
    ("url", lambda e: {"kind": "image_url", "url": e["url"]}),
    ("upload", lambda e: {"kind": "image_upload", "path": e["upload"], **_name(e)}),
    ("manifest_url", lambda e: {"kind": "manifest_url", "url": e["manifest_url"]}),
    (
        "manifest_upload",
        lambda e: {"kind": "manifest_upload", "path": e["manifest_upload"], **_name(e)},
    ),
)


def _name(entry: dict[str, Any]) -> dict[str, str]:
    return {"filename": entry["filename"]} if "filename" in entry else {}


def _upgrade(entry: Any) -> Any:
    if not isinstance(entry, dict) or "kind" in entry:
        return entry
    for key, convert in _LEGACY_KINDS:
        if key in entry:
            return convert(entry)
    return entry


class TaskSpec(BaseModel):
    """What a task asks for: its job's params (validated by the job's own model) and inputs."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TaskInput] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _legacy_inputs(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("inputs"), list):
            data = {**data, "inputs": [_upgrade(e) for e in data["inputs"]]}
        return data

    def of_kind(self, *kinds: type[_Input]) -> list[Any]:
        return [entry for entry in self.inputs if isinstance(entry, kinds)]


class InputRejected(Exception):
    """A job type refuses what a request asks for (too many images, nothing to work on): the API
    answers 422 with this code; jobs never speak HTTP themselves."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class WorkerResources:
    """What a worker process lends its jobs: loaded once per process (`worker_process_init`).
    Jobs see it as model/jobs/context.py's JobResources: everything here but the store, which
    only the runner and the lease renewals use."""

    settings: Settings
    redis: Redis
    store: TaskStore
    fetcher: SafeFetcher
    uploads: UploadReader  # the task's uploaded files (model/uploads.py: UploadStore)
    detectors: dict[str, YoloDetector] = field(default_factory=dict)  # name -> loaded detector
    embedders: Embedders | None = None
    default_model: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    # Provenance of a result made with a model: name, sha256, backend, device, versions...
    provenance: Callable[[Any], dict[str, Any]] = lambda _model: {}

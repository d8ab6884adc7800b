"""What a running job may do, and nothing more (like Cog's narrow predictor interface): emit
its items, report progress and provenance, read a finished task of the same key it works on,
and keep documents with its result. The worker's runner (model/lifecycle/runner.py)
implements it; every write goes through the attempt that holds the task, so a job cannot reach
the task store around that check.

Torch-free and light: job modules name these types at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis import Redis

    from model.inference.detector import YoloDetector
    from model.jobs.contract import DatasetUpload, ImageUpload, ManifestUpload, TaskSpec
    from model.jobs.items import ResultItem
    from model.jobs.similarity.embedders import Embedders
    from model.metrics.record import Meter
    from model.settings import Settings
    from model.sources.fetch import SafeFetcher
    from model.tasks.record import TaskRecord


class UploadReader(Protocol):
    """The task's uploaded files (model/uploads.py's UploadStore implements it; named here as a
    Protocol, so jobs do not import the upload store, which imports the job contract)."""

    @property
    def redis(self) -> Redis: ...  # binary-safe: model blobs are read through it too

    def read(self, entry: ImageUpload | ManifestUpload | DatasetUpload) -> bytes: ...


class JobResources(Protocol):
    """What the worker lends a job (model/jobs/contract.py: WorkerResources): loaded models,
    the fetcher, settings. Not the task store: a job writes through its context."""

    @property
    def settings(self) -> Settings: ...
    @property
    def redis(self) -> Redis: ...  # the analysis caches (info.json, detections)
    @property
    def fetcher(self) -> SafeFetcher: ...
    @property
    def uploads(self) -> UploadReader: ...
    @property
    def detectors(self) -> dict[str, YoloDetector]: ...
    @property
    def embedders(self) -> Embedders | None: ...
    @property
    def default_model(self) -> str: ...
    @property
    def versions(self) -> dict[str, str]: ...
    @property
    def provenance(self) -> Callable[[Any], dict[str, Any]]: ...


@dataclass(frozen=True)
class SourceResult:
    """A finished task of the same key that a job works on (crops, vectorize, cluster)."""

    task_id: str
    type: str
    items: list[dict[str, Any]]  # as stored, in index order
    provenance: dict[str, Any]  # whole (the record's own copy may be summarised)


class JobContext(Protocol):
    @property
    def task_id(self) -> str: ...
    @property
    def record(self) -> TaskRecord: ...  # as it was when the job started: owner, type, timeout
    @property
    def spec(self) -> TaskSpec: ...
    @property
    def resources(self) -> JobResources: ...
    @property
    def meter(self) -> Meter | None: ...

    def check_cancel(self) -> None:
        """Raises JobCancelled once the task is cancelled (AttemptLost once superseded)."""

    def finished_indices(self) -> set[int]:
        """Items already stored: a task redelivered after a crash resumes after them."""

    def failed_count(self) -> int:
        """Items stored as failed so far."""

    def emit(self, item: ResultItem, failed: bool = False) -> None:
        """Store one result item (validated by its model already)."""

    def set_provenance(self, provenance: dict[str, Any]) -> None: ...

    def set_summary(self, summary: dict[str, Any]) -> None:
        """Result fields beside the items (replaced whole on each call)."""

    def set_total(self, total: int) -> None:
        """How many items the task will have, once its inputs are expanded."""

    def source(self, task_id: str, types: tuple[str, ...]) -> SourceResult:
        """A finished task of this task's key and of one of `types` (else JobFailed)."""

    def keep_manifest(self, index: int, document: str) -> None:
        """Keep a manifest's JSON text with the result (the API serves it to viewers)."""

    def kept_manifest(self, task_id: str, index: int) -> str | None:
        """A manifest kept by this task or by a task of its key read with `source`."""

    def keep_file(self, name: str, data: bytes) -> None:
        """Keep a file made by the task with its result (a cluster's prototype PNG)."""

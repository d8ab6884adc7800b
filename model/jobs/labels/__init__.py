"""The labels job: how many illustrations of each label a finished detect task found, page by
page and in all. Its documentation is README.md beside this file.

Torch-free and light: the HTTP process imports it (model/jobs/registry.py)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from model.jobs.contract import DetectTaskRequest, SourceTask
from model.jobs.items import ResultItem
from model.jobs.spec import JobSpec
from model.settings import JobLimits

if TYPE_CHECKING:
    from model.jobs.context import JobContext


class LabelsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="Count only detections at least this confident"
    )


class LabelsInput(DetectTaskRequest):
    """The detect task whose labels to count."""


class LabelsPage(ResultItem):
    """One page of the detect task: how many of its detections carry each label."""

    labels: dict[str, int] = Field(default_factory=dict, description="label -> detections")


def run(ctx: JobContext) -> None:
    # The worker's side: imported when the task runs, never by the HTTP process.
    from model.jobs.crops import detect_pages

    params = LabelsParams(**ctx.spec.params)
    (source,) = ctx.spec.of_kind(SourceTask)
    # JobFailed (source_not_found, source_unusable): not a finished detect task of this key.
    pages, _ = detect_pages(ctx, source.task_id)
    ctx.set_total(len(pages))
    done = ctx.finished_indices()
    total: Counter[str] = Counter()
    for page in pages:
        found = page.detections or []
        counts = Counter(d.label for d in found if d.confidence >= params.min_confidence)
        total.update(counts)
        if page.index in done:
            continue
        ctx.check_cancel()
        ctx.emit(LabelsPage(index=page.index, source=page.source, status="ok", labels=counts))
    ctx.set_summary({"labels": dict(total)})


SPEC = JobSpec(
    name="labels",
    summary="labels: how many illustrations of each label a finished detect task found",
    params=LabelsParams,
    input=LabelsInput,
    run=run,
    item=LabelsPage,  # the result item model: validated at emit, in the OpenAPI document
    docs="model/jobs/labels/README.md",
    task_inputs=LabelsInput.task_inputs,
    input_required=True,
    source_task_types=("detect",),  # the API refuses another key's or an unfinished task
    limits=JobLimits(timeout_default_s=60, timeout_max_s=600, max_images=0),
)

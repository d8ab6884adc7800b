"""The train job: fine-tune a detector on annotated pages and publish it (docs/training.md).

This module declares it (params, input, limits, its own queue); the work is in run.py, imported
by the worker only, with dataset.py, finetune.py and publish.py (benchmark.py and yolo_data.py
build the domain-shift benchmark it is measured on). Training tasks go to their own queue,
taken by the `train-worker` program alone (training.concurrency at once), so one never holds a
detection worker's place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.inference.catalog import NAME_PATTERN, ModelStoreError, validate_name
from model.jobs.contract import DatasetUpload, DatasetUrl, InputRejected, TaskInput
from model.jobs.evaluate import GROUND_TRUTH_WAYS, EvaluateInput, check_ground_truth
from model.jobs.evaluate import task_inputs as evaluate_task_inputs
from model.jobs.fields import bounded_integer
from model.jobs.items import ResultItem
from model.jobs.spec import JobSpec
from model.keyspace import DEFAULT_QUEUE
from model.settings import JobLimits, Settings
from model.urls import HTTP_URL_PATTERN, check_http_url

# Training tasks: a queue of their own, consumed by the `train-worker` program only (its own
# concurrency, training.concurrency), so a training task never holds a detection worker.
TRAIN_QUEUE = f"{DEFAULT_QUEUE}.train"
MIN_PAGES = 2  # annotated pages a training task needs: one to learn from, one to score on

if TYPE_CHECKING:
    from model.jobs.context import JobContext


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(
        description="Name of the new model: 1-64 of a-z 0-9 . _ -, not already in GET /models",
        pattern=NAME_PATTERN,
    )
    base_model: str | None = Field(
        None, description="Detect model from GET /models to start from; default if omitted"
    )
    epochs: bounded_integer(1, 300) = Field(30, description="Training epochs")  # type: ignore[valid-type]
    imgsz: bounded_integer(64, 1280) = Field(  # type: ignore[valid-type]
        416, multiple_of=32, description="Training and scoring input size (px, a multiple of 32)"
    )
    val_fraction: float = Field(
        0.2, ge=0.05, le=0.5, description="Share of the pages held out to score both models"
    )
    seed: bounded_integer(0, 2**31 - 1) = Field(0, description="Split and training seed")  # type: ignore[valid-type]
    default_class: str | None = Field(
        None,
        max_length=200,
        description="Label of IIIF annotations without one; default: the base model's class if "
        "it has one",
    )
    publish: Literal["if_better", "always"] = Field(
        "if_better",
        description="if_better: publish only when the new model's held-out mAP50 beats the "
        "base model's; always: publish whatever it scores",
    )

    visibility: Literal["key", "everyone"] | None = Field(
        None,
        description="Who may use the published model: `key`, this key alone (counted against "
        "its training.max_models_per_key and max_model_bytes_per_key), or `everyone` (admin keys "
        "only). Default: `everyone` for an admin key, else `key`",
    )

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        try:
            return validate_name(value)  # never a path, never a file suffix
        except ModelStoreError as exc:
            raise ValueError(exc.message) from exc


class TrainInput(EvaluateInput):
    """evaluate's ground truth (a manifest and its annotations, or a YOLO zip upload), or a YOLO
    zip by URL."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_url: str | None = Field(
        None,
        description="http(s) URL of a YOLO dataset zip: images, a label file per image (same "
        "stem, `class cx cy w h` normalized), class names in data.yaml or classes.txt",
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
    )

    @field_validator("dataset_url")
    @classmethod
    def _dataset_http_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_http_url(url)  # the worker's fetcher decides which hosts it may reach
        return url


class TrainEpoch(ResultItem):
    """The result item of one epoch (progress counts them): a result item like any other job's
    (index, source, status) plus the epoch's held-out mAP50."""

    epoch: int = Field(description="Epochs done (1 = the first)")
    val_map50: float | None = Field(description="mAP50 on the held-out pages after it")


def epoch_item(done: int, map50: float | None) -> TrainEpoch:
    return TrainEpoch(
        index=done - 1, source=f"epoch {done}", status="ok", epoch=done, val_map50=map50
    )


def _task_inputs(request_input: TrainInput) -> list[TaskInput]:
    inputs = evaluate_task_inputs(request_input)
    if request_input.dataset_url:
        inputs.append(DatasetUrl(url=request_input.dataset_url))
    return inputs


def _check(request_input: TrainInput, inputs: list[TaskInput], settings: Settings) -> None:
    parsed = check_ground_truth(
        request_input,
        inputs,
        settings,
        datasets=(DatasetUpload, DatasetUrl),
        ways=f"{GROUND_TRUTH_WAYS}, input.dataset_url",
    )
    # Inline annotations alone (no list by URL) must reach two pages: one to learn from, one
    # to score on. Boxes on canvases the manifest lacks are found only in the worker.
    if parsed is not None and not request_input.annotation_urls:
        pages = len(parsed.by_canvas())
        if pages < MIN_PAGES:
            raise InputRejected(
                "too_few_pages",
                f"the inline annotations have boxes on {pages} canvas(es); training needs "
                f"{MIN_PAGES} at least (one to learn from, one to score on)",
            )


def input_schema(ref: str) -> dict[str, Any]:
    """A JSON request names one source: a manifest (with its annotations) or a dataset zip URL
    (which carries its labels); uploads, the other ways, come as multipart parts."""
    return {
        "allOf": [{"$ref": ref}],
        "anyOf": [
            {
                "required": ["manifest_url"],
                "properties": {"manifest_url": {"type": "string"}, "dataset_url": {"type": "null"}},
            },
            {
                "required": ["dataset_url"],
                "properties": {
                    "dataset_url": {"type": "string"},
                    "manifest_url": {"type": "null"},
                    "annotations": {"maxItems": 0},
                    "annotation_urls": {"maxItems": 0},
                },
            },
        ],
    }


def _active_per_key(settings: Settings) -> int:
    return settings.training.max_active_per_key


def run(ctx: JobContext) -> None:
    from model.jobs.train.run import run_train

    run_train(ctx)


SPEC = JobSpec(
    name="train",
    summary="train: fine-tune a detector on annotated pages, score it against its base, publish",
    params=TrainParams,
    input=TrainInput,
    run=run,
    item=TrainEpoch,
    docs="docs/training.md",
    task_inputs=_task_inputs,
    check=_check,
    input_required=False,
    params_required=True,
    uploads=True,
    input_schema=input_schema,
    model_fields={"base_model": "detect"},
    publishes_model=True,
    limits=JobLimits(timeout_default_s=3600, timeout_max_s=21600, max_images=500),
    queue=TRAIN_QUEUE,
    active_per_key=_active_per_key,
)

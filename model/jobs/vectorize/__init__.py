"""The vectorize job: diagrams as geometric primitives (lines, circles, arcs), from images, IIIF
canvases, or the illustrations a finished detect task found (issue 21).

This module declares it (request models, inputs, limits; light: the HTTP process imports it);
the work is in model/jobs/vectorize/run.py and the method in geometry.py, imported by the worker
only. Coordinates are the full image's pixels, or canvas coordinates for IIIF canvases, as
detect gives its boxes; a region's primitives are in its page's coordinates. Angles are degrees
in [0, 360) of atan2(y - cy, x - cx) (y down); an arc runs from start_deg to end_deg by
increasing angle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.jobs.contract import (
    ImageUpload,
    ImageUrl,
    InputRejected,
    SourceTask,
    TaskInput,
)
from model.jobs.detect import DetectInput
from model.jobs.detect import check as check_pages
from model.jobs.detect import input_schema as detect_input_schema
from model.jobs.detect import task_inputs as page_inputs
from model.jobs.fields import bounded_integer
from model.jobs.spec import JobSpec
from model.jobs.vectorize.items import VectorizeItem
from model.settings import JobLimits, Settings

Kind = Literal["line", "circle", "arc"]
KINDS: tuple[Kind, ...] = ("line", "circle", "arc")
TASK_ID_PATTERN = r"^[0-9a-f]{32}$"
METHOD = "classical-hough-lsd"
VERSION = "6"

if TYPE_CHECKING:
    from model.jobs.context import JobContext


class VectorizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    primitives: list[Kind] = Field(
        default_factory=lambda: list(KINDS),
        min_length=1,
        description="Which primitives to report: a non-empty subset of line, circle, arc",
    )
    max_side: bounded_integer(64, 4000) = Field(  # type: ignore[valid-type]
        700,
        description="Longest side analysed (px); the image is shrunk to it, coordinates are "
        "given back in the full image's pixels",
    )
    ink_contrast: float = Field(
        0.22, gt=0.0, lt=1.0, description="Ink is at least this much darker than its paper"
    )
    min_blob: float = Field(
        0.03,
        ge=0.0,
        le=0.5,
        description="Connected ink shorter than this share of the diagonal (letters) is ignored",
    )
    circle_coverage: float = Field(
        0.8, gt=0.0, le=1.0, description="A ring inked over this share of its angles is a circle"
    )
    min_arc_deg: float = Field(35.0, ge=5.0, le=350.0, description="Shortest arc reported (deg)")
    min_radius: float = Field(
        0.02, ge=0.0, le=0.5, description="Smallest circle or arc radius, share of the diagonal"
    )
    min_line: float = Field(
        0.04, ge=0.0, le=1.0, description="Shortest line reported, share of the diagonal"
    )
    line_support: float = Field(
        0.6, ge=0.0, le=1.0, description="Share of a line's length that must be ink"
    )

    @field_validator("primitives")
    @classmethod
    def _distinct(cls, kinds: list[Kind]) -> list[Kind]:
        return [k for k in KINDS if k in kinds]

    def thresholds(self) -> dict[str, float]:
        return self.model_dump(exclude={"primitives", "max_side"})


class VectorizeInput(DetectInput):
    task_id: str | None = Field(
        None,
        pattern=TASK_ID_PATTERN,
        description="A finished detect task of the same API key: vectorize each illustration "
        "it found (alone: no images or manifests beside it)",
    )


def task_inputs(request_input: VectorizeInput) -> list[TaskInput]:
    source = [SourceTask(task_id=request_input.task_id)] if request_input.task_id else []
    return [*source, *page_inputs(request_input)]


def check(request_input: VectorizeInput, inputs: list[TaskInput], settings: Settings) -> None:
    pages = [e for e in inputs if not isinstance(e, SourceTask)]
    if request_input.task_id is None:
        check_pages(request_input, inputs, settings)
    elif pages:
        raise InputRejected(
            "invalid_input", "input.task_id stands alone: no images or manifests beside it"
        )
    images = sum(isinstance(e, ImageUrl | ImageUpload) for e in inputs)
    most = SPEC.limits_in(settings).max_images
    if images > most:
        raise InputRejected("too_many_images", f"at most {most} images per vectorize task")


def input_schema(ref: str) -> dict[str, Any]:
    """At least one image or manifest URL (as detect) and no task, or a detect task alone."""
    schema = detect_input_schema(ref)
    pages = [
        {**variant, "properties": {**variant["properties"], "task_id": {"type": "null"}}}
        for variant in schema["anyOf"]
    ]
    alone = {
        "required": ["task_id"],
        "properties": {
            "task_id": {"type": "string"},
            "image_urls": {"maxItems": 0},
            "manifest_url": {"type": "null"},
            "manifest_urls": {"maxItems": 0},
        },
    }
    return {**schema, "anyOf": [*pages, alone]}


def run(ctx: JobContext) -> None:
    from model.jobs.vectorize.run import run_vectorize

    run_vectorize(ctx)


SPEC = JobSpec(
    name="vectorize",
    summary="vectorize: diagrams as lines, circles and arcs (images, IIIF canvases, or the "
    "illustrations of a finished detect task)",
    params=VectorizeParams,
    input=VectorizeInput,
    run=run,
    item=VectorizeItem,
    docs="docs/vectorize.md",
    task_inputs=task_inputs,
    check=check,
    uploads=True,
    source_task_types=("detect",),
    limits=JobLimits(timeout_default_s=600, timeout_max_s=3600, max_images=500),
    initial_total=lambda inputs: sum(isinstance(e, ImageUrl | ImageUpload) for e in inputs),
    input_schema=input_schema,
)

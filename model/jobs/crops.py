"""The crops job: the illustrations a finished detect task found, as cut-outs — a IIIF Image API
region URL for each (any IIIF viewer or `curl` fetches just that picture, at full resolution)
plus its box in the full image's pixels.

Users of the seed systems asked for the pictures themselves, not only boxes on pages. No pixels
are moved here: the region URLs ask the page's own image service (level 1 or more) for the cut.
Pages that did not come from an image service (plain URLs, uploads) get their box only.

The whole job is this module and one line in model/jobs/registry.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from model.jobs.contract import DetectTaskRequest, SourceTask
from model.jobs.items import Detection, DetectPage, ResultItem
from model.jobs.spec import JobSpec
from model.settings import JobLimits

if TYPE_CHECKING:
    from model.jobs.context import JobContext


class CropsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    padding: float = Field(
        0.0, ge=0.0, le=0.5, description="Margin added on each side, as a fraction of the box"
    )
    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="Leave out detections below this confidence"
    )


class CropsInput(DetectTaskRequest):
    """The detect task whose illustrations to cut."""


class Crop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    confidence: float
    xywh: list[int] = Field(description="x, y, width, height in the full image's pixels")
    region_url: str | None = Field(
        description="IIIF Image API region request of the crop (null: the page came from no "
        "image service)"
    )


class CropsPage(ResultItem):
    """A crops item: one page of the detect task (its index and source), with its crops."""

    canvas_id: str | None = None
    label: str | None = None
    manifest: int | None = Field(None, description="Index of the manifest in provenance")
    image_url: str | None = Field(None, description="The detect task's image request")
    detections: list[Detection] = Field(
        default_factory=list, description="Always empty: the boxes are in `crops`"
    )
    crops: list[Crop] = Field(default_factory=list)


def _crop(page: DetectPage, detection: Detection, params: CropsParams) -> Crop:
    sx, sy = page.full_size_scale()
    x, y, w, h = detection.xywh
    pad_x, pad_y = w * params.padding, h * params.padding
    left, top = max(0, round((x - pad_x) * sx)), max(0, round((y - pad_y) * sy))
    width, height = round((w + 2 * pad_x) * sx), round((h + 2 * pad_y) * sy)
    full_w, full_h = (page.request.full_width, page.request.full_height) if page.request else (0, 0)
    if full_w and full_h:  # never past the image's edge
        width, height = min(width, full_w - left), min(height, full_h - top)
    service = page.image_service
    region = f"{left},{top},{width},{height}"
    return Crop(
        label=detection.label,
        confidence=detection.confidence,
        xywh=[left, top, width, height],
        region_url=f"{service}/{region}/pct:100/0/default.jpg" if service else None,
    )


def crops_of(page: DetectPage, params: CropsParams) -> CropsPage:
    """One result item: the page's crops (a failed page stays failed)."""
    where = page.model_dump(
        include={"index", "source", "canvas_id", "label", "manifest", "image_url"},
        exclude_unset=True,
    )
    if page.status != "ok":
        return CropsPage(**where, status="failed", crops=[], error=page.error)
    crops = [
        _crop(page, d, params) for d in page.detections if d.confidence >= params.min_confidence
    ]
    return CropsPage(**where, status="ok", detections=[], crops=crops)


def detect_pages(ctx: JobContext, task_id: str) -> tuple[list[DetectPage], dict]:
    """The pages of a finished detect task of this task's key, in order, and its provenance
    (else JobFailed)."""
    source = ctx.source(task_id, ("detect",))
    return [DetectPage.model_validate(item) for item in source.items], source.provenance


def run(ctx: JobContext) -> None:
    params = CropsParams(**ctx.spec.params)
    (source,) = ctx.spec.of_kind(SourceTask)
    pages, _provenance = detect_pages(ctx, source.task_id)
    ctx.set_total(len(pages))
    done = ctx.finished_indices()
    for page in pages:
        if page.index in done:
            continue
        ctx.check_cancel()
        result = crops_of(page, params)
        ctx.emit(result, failed=result.status == "failed")


SPEC = JobSpec(
    name="crops",
    summary="crops: the illustrations of a finished detect task as IIIF region URLs",
    params=CropsParams,
    input=CropsInput,
    run=run,
    item=CropsPage,
    docs="docs/api.md#crops-the-illustrations-themselves",
    task_inputs=CropsInput.task_inputs,
    input_required=True,
    limits=JobLimits(timeout_default_s=120, timeout_max_s=600, max_images=0),
)

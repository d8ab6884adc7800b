"""The crops job: the illustrations a finished detect task found, as cut-outs — a IIIF Image API
region URL for each (any IIIF viewer or `curl` fetches just that picture, at full resolution)
plus its box in the full image's pixels.

Users of the seed systems asked for the pictures themselves, not only boxes on pages. No pixels
are moved here: the region URLs ask the page's own image service (level 1 or more) for the cut.
Pages that did not come from an image service (plain URLs, uploads) get their box only.

The whole job is this module and one line in model/jobs/registry.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from model.jobs import JobFailed
from model.jobs.contract import SourceTask, TaskInput
from model.jobs.spec import JobSpec
from model.settings import JobLimits

TASK_ID_PATTERN = r"^[0-9a-f]{32}$"
# How the detect job planned a page's request (item.request.method): every way but "image" (the
# image resource itself) asked an image service, which can then be asked for a region.
NO_SERVICE = "image"
FINISHED = {"SUCCEEDED", "TIMED_OUT", "CANCELLED"}


class CropsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    padding: float = Field(
        0.0, ge=0.0, le=0.5, description="Margin added on each side, as a fraction of the box"
    )
    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="Leave out detections below this confidence"
    )


class CropsInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: str = Field(
        pattern=TASK_ID_PATTERN, description="A finished detect task of the same API key"
    )


def _full_size_scale(item: dict[str, Any]) -> tuple[float, float]:
    """From the item's box coordinates (canvas, or decoded image) to the full image's pixels."""
    request = item.get("request") or {}
    full_w, full_h = request.get("full_width"), request.get("full_height")
    base_w = item.get("canvas_width") or item.get("width")
    base_h = item.get("canvas_height") or item.get("height")
    if not (full_w and full_h and base_w and base_h):
        return 1.0, 1.0
    return full_w / base_w, full_h / base_h


def _service_base(item: dict[str, Any]) -> str | None:
    """The image service a page was asked from: its request minus region/size/rotation/quality."""
    request = item.get("request") or {}
    url = item.get("image_url")
    if request.get("method") in (None, NO_SERVICE) or not url:
        return None
    parts = url.split("?")[0].rstrip("/").split("/")
    return "/".join(parts[:-4]) if len(parts) > 6 else None


def _crop(item: dict[str, Any], detection: dict[str, Any], params: CropsParams) -> dict[str, Any]:
    sx, sy = _full_size_scale(item)
    x, y, w, h = detection["xywh"]
    pad_x, pad_y = w * params.padding, h * params.padding
    left, top = max(0, round((x - pad_x) * sx)), max(0, round((y - pad_y) * sy))
    width, height = round((w + 2 * pad_x) * sx), round((h + 2 * pad_y) * sy)
    full_w = (item.get("request") or {}).get("full_width")
    full_h = (item.get("request") or {}).get("full_height")
    if full_w and full_h:  # never past the image's edge
        width, height = min(width, full_w - left), min(height, full_h - top)
    base = _service_base(item)
    region = f"{left},{top},{width},{height}"
    return {
        "label": detection["label"],
        "confidence": detection["confidence"],
        "xywh": [left, top, width, height],  # in the full image's pixels
        "region_url": f"{base}/{region}/pct:100/0/default.jpg" if base else None,
    }


def crops_of(item: dict[str, Any], params: CropsParams) -> dict[str, Any]:
    """One result item: the page's crops (a failed page stays failed)."""
    keep = ("index", "source", "canvas_id", "label", "manifest", "image_url")
    out = {k: item[k] for k in keep if k in item}
    if item.get("status") != "ok":
        return {**out, "status": "failed", "crops": [], "error": item.get("error")}
    crops = [
        _crop(item, d, params)
        for d in item.get("detections", [])
        if d["confidence"] >= params.min_confidence
    ]
    return {**out, "status": "ok", "detections": [], "crops": crops}


def detect_items(ctx: Any, task_id: str, job: str) -> list[dict[str, Any]]:
    """The items of a finished detect task of this task's key, in order (else JobFailed)."""
    record = ctx.store.get(task_id)
    if record is None or record.owner != ctx.record.owner:
        # Another key's task is no more visible here than through the API.
        raise JobFailed("source_not_found", f"no task {task_id} of this key")
    if record.type != "detect" or record.state.value not in FINISHED:
        raise JobFailed(
            "source_unusable",
            f"task {task_id} is a {record.type} task in state {record.state.value};"
            f" {job} needs a finished detect task",
        )
    return sorted(ctx.store.items(task_id), key=lambda item: item["index"])


def run(ctx: Any) -> None:
    params = CropsParams(**ctx.spec.params)
    (source,) = ctx.spec.of_kind(SourceTask)
    items = detect_items(ctx, source.task_id, "crops")
    ctx.set_total(len(items))
    done = ctx.finished_indices()
    for item in items:
        if item["index"] in done:
            continue
        ctx.check_cancel()
        result = crops_of(item, params)
        ctx.emit(result, failed=result["status"] == "failed")


def task_inputs(request_input: CropsInput) -> list[TaskInput]:
    return [SourceTask(task_id=request_input.task_id)]


SPEC = JobSpec(
    name="crops",
    summary="crops: the illustrations of a finished detect task as IIIF region URLs",
    params=CropsParams,
    input=CropsInput,
    run=run,
    task_inputs=task_inputs,
    input_required=True,
    limits=JobLimits(timeout_default_s=120, timeout_max_s=600, max_images=0),
)

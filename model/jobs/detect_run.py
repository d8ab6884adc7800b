"""The detect job's work in the worker (declared in model/jobs/detect.py): illustrations on
images (URLs, uploads) and on the canvases of IIIF manifests.

Downloads run in threads ahead of inference (a bounded prefetch), inference runs in batches, and
each page becomes one result item as soon as it is done, so a timeout or cancel keeps everything
finished so far. A page that cannot be fetched or decoded is a failed item, not a failed job;
only an unusable manifest fails the job. Boxes of canvases are in canvas coordinates.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from PIL import Image

from model.jobs import JobFailed
from model.jobs.context import JobContext
from model.jobs.detect import MAX_SIDE_FACTOR, DetectParams
from model.jobs.items import DetectPage
from model.jobs.loading import PageLoader, Prepared, decoded_boxes, page_item, to_output_box
from model.jobs.pages import Pages, open_pages
from model.pipeline.cache import DetectionCache, params_digest


class Detector(Protocol):
    name: str
    imgsz: int

    def predict(
        self, images: list[Image.Image], confidence: float, iou: float
    ) -> list[list[dict[str, Any]]]: ...


def run_detect(ctx: JobContext) -> None:
    params = DetectParams(**ctx.spec.params)
    resources = ctx.resources
    name = params.model or resources.default_model
    detector: Detector | None = resources.detectors.get(name)
    if detector is None:
        raise JobFailed("model_unavailable", f"model {name!r} is not loaded on this worker")
    max_side = params.max_side or detector.imgsz * MAX_SIDE_FACTOR
    info = getattr(detector, "info", None)
    provenance: dict[str, Any] = {
        **resources.provenance(detector),
        "params": params.model_dump(),
        "max_side": max_side,
        "classes": list(getattr(info, "classes", [])),
    }
    ctx.set_provenance(provenance)
    with open_pages(ctx, provenance) as pages:
        plan = pages.plan_task(keep_manifests=True)
        ctx.set_total(len(plan.units))
        pending = pages.pending(plan.units)
        pages.timings["inference_s"] = 0.0
        analysis = {"confidence": params.confidence, "iou": params.iou, "max_side": max_side}
        loader = page_loader(pages, detector, max_side, analysis)
        with pages.batches(pending, loader) as batches:
            for batch in batches:
                _analyse(ctx, batch, detector, params, loader.cache, pages.timings)


def page_loader(
    pages: Pages, detector: Detector, max_side: int, analysis: dict[str, Any]
) -> PageLoader:
    """Pages as the detector sees them: fetched (IIIF image services asked for the size it
    needs), decoded, shrunk once; detections cached by model sha256 and `analysis` params."""
    model_key = getattr(getattr(detector, "info", None), "sha256", detector.name)
    return pages.loader(
        cache=pages.detection_cache(),
        params_key=params_digest(model_key, analysis),
        max_side=max_side,
        min_side=min(max_side, detector.imgsz),
        analyse_side=min(max_side, detector.imgsz),
    )


def _analyse(
    ctx: JobContext,
    batch: list[Prepared],
    detector: Detector,
    params: DetectParams,
    cache: DetectionCache,
    timings: dict[str, float],
) -> None:
    ready: list[Prepared] = []
    for prepared in batch:
        if prepared.error is not None:
            code, message = prepared.error
            failed = {**prepared.item, "status": "failed", "detections": [], "timings": {}}
            failed["timings"] = {k: round(v, 4) for k, v in prepared.timings.items()}
            failed["error"] = {"code": code, "message": message}
            ctx.emit(DetectPage.model_validate(failed), failed=True)
        elif prepared.cached is not None:
            _emit_ok(ctx, prepared, prepared.cached, cached=True)
        else:
            ready.append(prepared)
    if not ready:
        return
    started = time.perf_counter()
    predictions = detector.predict([p.image for p in ready], params.confidence, params.iou)
    if ctx.meter is not None:
        ctx.meter.inference_batch(detector.name, len(ready))
    per_image_s = (time.perf_counter() - started) / len(ready)
    timings["inference_s"] += per_image_s * len(ready)
    for prepared, detections in zip(ready, predictions, strict=True):
        decoded = decoded_boxes(prepared, detections)
        width, height = prepared.decoded_size
        if prepared.cache_key:
            cache.put(prepared.cache_key, {"width": width, "height": height, "detections": decoded})
        prepared.image = None  # free the pixels now, not when the batch list goes
        prepared.timings["inference_s"] = per_image_s
        _emit_ok(ctx, prepared, decoded, cached=False)


def _emit_ok(
    ctx: JobContext, prepared: Prepared, decoded: list[dict[str, Any]], cached: bool
) -> None:
    detections = [
        {
            "xywh": to_output_box(prepared, d["xyxy"]),
            "confidence": d["confidence"],
            "label": d["label"],
        }
        for d in decoded
    ]
    item = page_item(prepared, cached, detections=detections)
    ctx.emit(DetectPage.model_validate(item))

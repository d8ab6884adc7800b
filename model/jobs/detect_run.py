"""The detect job's work in the worker (declared in model/jobs/detect.py): illustrations on
images (URLs, uploads) and on the canvases of IIIF manifests.

Downloads run in threads ahead of inference (a bounded prefetch), inference runs in batches, and
each page becomes one result item as soon as it is done, so a timeout or cancel keeps everything
finished so far. A page that cannot be fetched or decoded is a failed item, not a failed job;
only an unusable manifest fails the job. Boxes of canvases are in canvas coordinates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from model.iiif.info_cache import InfoCache
from model.iiif.loader import ManifestSummary, json_getter
from model.iiif.negotiate import ServiceInfo
from model.jobs import JobFailed
from model.jobs.context import JobContext, JobResources
from model.jobs.detect import MAX_SIDE_FACTOR, DetectParams
from model.jobs.items import DetectPage
from model.jobs.loading import PageLoader, Prepared, page_batches, to_output_box
from model.jobs.units import plan_units
from model.pipeline.cache import DetectionCache, params_digest
from model.sources.fetch import FetchScope


class Detector(Protocol):
    name: str
    imgsz: int

    def predict(
        self, images: list[Image.Image], confidence: float, iou: float
    ) -> list[list[dict[str, Any]]]: ...


def run_detect(ctx: JobContext) -> None:
    params = DetectParams(**ctx.spec.params)
    resources = ctx.resources
    settings = resources.settings
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

    # Cancel, timeout or error: Prefetcher.close() cancels the scope, which ends the download
    # threads' fetches (connections closed, per-host slots freed) instead of letting them run on.
    scope = FetchScope()
    fetcher = resources.fetcher.scoped(scope)
    plan = plan_units(ctx.spec, fetcher, settings, resources.uploads)
    if plan.warnings:  # shown by /status from now on, not only once the task has ended
        provenance["warnings"] = plan.warnings
        ctx.set_provenance(provenance)
    keep_manifests(ctx, plan.manifests, settings)
    ctx.set_total(len(plan.units))
    finished = ctx.finished_indices()
    pending = [unit for unit in plan.units if unit.index not in finished]
    analysis = {"confidence": params.confidence, "iou": params.iou, "max_side": max_side}
    loader = page_loader(resources, fetcher, detector, max_side, analysis)
    stats = _Stats()
    started = time.perf_counter()
    try:
        with page_batches(pending, loader, settings, scope, ctx.check_cancel) as batches:
            for batch in batches:
                _analyse(ctx, batch, detector, params, loader.cache, stats)
    finally:
        provenance.update(
            manifests=[m.as_dict() for m in plan.manifests],
            manifest_problems=plan.problems,
            manifest_problems_count=plan.problems_count,
            resumed_after=len(finished),
            pipeline={
                "download_threads": settings.pipeline.download_threads,
                "prefetch_depth": settings.pipeline.prefetch_depth,
                "batch_size": settings.worker.batch_size,
                "per_host_concurrency": settings.fetch.per_host_concurrency,
                "per_host_start": settings.fetch.per_host_start,
                "worker_concurrency": settings.worker.concurrency,
                "inference_threads": settings.inference_threads(),
            },
            cache={"hits": stats.hits, "misses": stats.misses},
            bytes_fetched=stats.bytes_fetched,
            timings={
                **{k: round(v, 3) for k, v in stats.timings.items()},
                "wall_s": round(time.perf_counter() - started, 3),
            },
        )
        ctx.set_provenance(provenance)


def page_loader(
    resources: JobResources,
    fetcher: Any,
    detector: Detector,
    max_side: int,
    analysis: dict[str, Any],
) -> PageLoader:
    """Pages as the detector sees them: fetched (IIIF image services asked for the size it
    needs), decoded, shrunk once; detections cached by model sha256 and `analysis` params."""
    settings = resources.settings
    model_key = getattr(getattr(detector, "info", None), "sha256", detector.name)
    return PageLoader(
        fetcher=fetcher,
        services=ServiceInfo(
            json_getter(fetcher, settings.iiif.max_json_bytes),
            InfoCache(resources.redis, settings.iiif.info_cache_ttl_s),
        ),
        cache=DetectionCache(resources.redis, settings.cache.ttl_s, settings.cache.max_entries),
        params_key=params_digest(model_key, analysis),
        max_side=max_side,
        min_side=min(max_side, detector.imgsz),
        max_pixels=settings.fetch.max_pixels,
        analyse_side=min(max_side, detector.imgsz),
        uploads=resources.uploads,
    )


def keep_manifests(ctx: JobContext, manifests: list[ManifestSummary], settings: Any) -> None:
    """Keep the manifests read with the task: the API serves them to viewers with the
    detections attached (it never fetches). One over iiif.max_kept_manifest_bytes is not kept;
    its annotation pages are served all the same."""
    for manifest in manifests:
        if manifest.document is None:
            continue
        try:
            text = json.dumps(manifest.document, separators=(",", ":"), ensure_ascii=False)
        except (ValueError, RecursionError):
            continue
        if len(text.encode()) <= settings.iiif.max_kept_manifest_bytes:
            ctx.keep_manifest(manifest.index, text)


@dataclass
class _Stats:
    hits: int = 0
    misses: int = 0
    bytes_fetched: int = 0
    timings: dict[str, float] = field(
        default_factory=lambda: {"fetch_s": 0.0, "decode_s": 0.0, "inference_s": 0.0}
    )

    def add(self, prepared: Prepared) -> None:
        self.bytes_fetched += prepared.item.get("bytes", 0)
        for stage, seconds in prepared.timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        for stage, seconds in (
            ("fetch_cpu_s", prepared.fetch_cpu_s),
            ("decode_cpu_s", prepared.decode_cpu_s),
        ):
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds


def _analyse(
    ctx: JobContext,
    batch: list[Prepared],
    detector: Detector,
    params: DetectParams,
    cache: DetectionCache,
    stats: _Stats,
) -> None:
    ready: list[Prepared] = []
    for prepared in batch:
        stats.add(prepared)
        if prepared.error is not None:
            code, message = prepared.error
            failed = {**prepared.item, "status": "failed", "detections": [], "timings": {}}
            failed["timings"] = {k: round(v, 4) for k, v in prepared.timings.items()}
            failed["error"] = {"code": code, "message": message}
            ctx.emit(DetectPage.model_validate(failed), failed=True)
        elif prepared.cached is not None:
            stats.hits += 1
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
    stats.misses += len(ready)
    stats.timings["inference_s"] += per_image_s * len(ready)
    for prepared, detections in zip(ready, predictions, strict=True):
        # Boxes come in the analysed image's pixels: keep them in the decoded image's.
        decoded = [
            {
                "xyxy": [round(v / prepared.scale, 2) for v in d["xyxy"]],
                "confidence": round(float(d["confidence"]), 4),
                "label": d["label"],
            }
            for d in detections
        ]
        width, height = prepared.decoded_size
        if prepared.cache_key:
            cache.put(prepared.cache_key, {"width": width, "height": height, "detections": decoded})
        prepared.image = None  # free the pixels now, not when the batch list goes
        prepared.timings["inference_s"] = per_image_s
        _emit_ok(ctx, prepared, decoded, cached=False)


def _emit_ok(
    ctx: JobContext, prepared: Prepared, decoded: list[dict[str, Any]], cached: bool
) -> None:
    width, height = prepared.decoded_size
    item = {
        **prepared.item,
        "status": "ok",
        "width": width,
        "height": height,
        "cached": cached,
        "detections": [
            {
                "xywh": to_output_box(prepared, d["xyxy"]),
                "confidence": d["confidence"],
                "label": d["label"],
            }
            for d in decoded
        ],
        "timings": {k: round(v, 4) for k, v in prepared.timings.items()},
    }
    if prepared.unit.canvas is not None:
        item["coordinates"] = "canvas"
        item["canvas_width"] = item.get("canvas_width") or width
        item["canvas_height"] = item.get("canvas_height") or height
    ctx.emit(DetectPage.model_validate(item))

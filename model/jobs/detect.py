"""Detect illustrations on images (URLs, uploads) and on the canvases of IIIF manifests.

Downloads run in threads ahead of inference (a bounded prefetch), inference runs in batches, and
each page becomes one result item as soon as it is done, so a timeout or cancel keeps everything
finished so far. A page that cannot be fetched or decoded is a failed item, not a failed job;
only an unusable manifest fails the job. Boxes of canvases are in canvas coordinates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.iiif.loader import json_getter
from model.iiif.negotiate import ServiceInfo
from model.jobs import JobFailed
from model.jobs.fields import bounded_integer
from model.jobs.loading import PageLoader, Prepared, to_output_box
from model.jobs.units import plan_units
from model.pipeline.cache import DetectionCache, params_digest
from model.pipeline.prefetch import Prefetcher
from model.sources.fetch import FetchScope
from model.urls import HTTP_URL_PATTERN, check_http_url, url_list_schema

# Without an explicit max_side, IIIF images are requested at this many times the model's input
# size: enough detail for the one shrink to the model's input, far fewer pixels to move.
MAX_SIDE_FACTOR = 2


class DetectParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="Model name from GET /models; default if omitted")
    confidence: float = Field(0.25, ge=0.0, le=1.0, description="Minimum detection confidence")
    iou: float = Field(0.45, ge=0.0, le=1.0, description="IoU threshold of non-maximum suppression")
    max_side: bounded_integer(32, 20000) | None = Field(  # type: ignore[valid-type]
        None,
        description="Longest image side requested from IIIF image services (px); the model sees "
        "at most its own input size; default 2x model size",
    )


class DetectInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of images",
        json_schema_extra=url_list_schema(),
    )
    manifest_url: str | None = Field(
        None,
        description="http(s) URL of a IIIF manifest or collection (Presentation 2.x/3.0)",
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
    )
    manifest_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of IIIF manifests or collections",
        json_schema_extra=url_list_schema(),
    )

    @field_validator("image_urls", "manifest_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        # Only the shape is checked here; the worker's fetcher decides which hosts it may reach.
        for url in urls:
            check_http_url(url)
        return urls

    @field_validator("manifest_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_http_url(url)
        return url

    def all_manifest_urls(self) -> list[str]:
        return ([self.manifest_url] if self.manifest_url else []) + self.manifest_urls


# Distinct names in the OpenAPI document; the job-local names stay short.
Params = DetectParams
Input = DetectInput


class Detector(Protocol):
    name: str
    imgsz: int

    def predict(
        self, images: list[Image.Image], confidence: float, iou: float
    ) -> list[list[dict[str, Any]]]: ...


def run(ctx: Any) -> None:
    params = Params(**ctx.spec.get("params", {}))
    resources = ctx.resources
    settings = resources["settings"]
    name = params.model or resources["default_model"]
    detector: Detector | None = resources["detectors"].get(name)
    if detector is None:
        raise JobFailed("model_unavailable", f"model {name!r} is not loaded on this worker")
    max_side = params.max_side or detector.imgsz * MAX_SIDE_FACTOR
    info = getattr(detector, "info", None)
    provenance: dict[str, Any] = {
        **resources["provenance"](detector),
        "params": params.model_dump(),
        "max_side": max_side,
        "classes": list(getattr(info, "classes", [])),
    }
    ctx.set_provenance(provenance)

    # Cancel, timeout or error: Prefetcher.close() cancels the scope, which ends the download
    # threads' fetches (connections closed, per-host slots freed) instead of letting them run on.
    scope = FetchScope()
    fetcher = resources["fetcher"].scoped(scope)
    plan = plan_units(ctx.spec["inputs"], fetcher, settings)
    ctx.set_total(len(plan.units))
    finished = ctx.finished_indices()
    pending = [unit for unit in plan.units if unit.index not in finished]
    analysis = {"confidence": params.confidence, "iou": params.iou, "max_side": max_side}
    loader = PageLoader(
        fetcher=fetcher,
        services=ServiceInfo(json_getter(fetcher, settings.iiif.max_json_bytes)),
        cache=DetectionCache(
            resources.get("redis"), settings.cache.ttl_s, settings.cache.max_entries
        ),
        params_key=params_digest(getattr(info, "sha256", name), analysis),
        max_side=max_side,
        min_side=min(max_side, detector.imgsz),
        max_pixels=settings.fetch.max_pixels,
        analyse_side=min(max_side, detector.imgsz),
    )
    stats = _Stats()
    started = time.perf_counter()
    try:
        with Prefetcher(
            pending,
            loader,
            loader.failed,
            threads=settings.pipeline.download_threads,
            depth=settings.pipeline.prefetch_depth,
            on_close=scope.cancel,
        ) as prefetch:
            # next_batch checks the cancel flag while it waits, so a cancel is seen between
            # batches and while downloads are slow.
            while batch := prefetch.next_batch(settings.worker.batch_size, ctx.check_cancel):
                _analyse(ctx, batch, detector, params, loader.cache, stats)
    finally:
        provenance.update(
            manifests=[m.as_dict() for m in plan.manifests],
            manifest_problems=plan.problems,
            resumed_after=len(finished),
            pipeline={
                "download_threads": settings.pipeline.download_threads,
                "prefetch_depth": settings.pipeline.prefetch_depth,
                "batch_size": settings.worker.batch_size,
                "per_host_concurrency": settings.fetch.per_host_concurrency,
                "per_host_start": settings.fetch.per_host_start,
            },
            cache={"hits": stats.hits, "misses": stats.misses},
            bytes_fetched=stats.bytes_fetched,
            timings={
                **{k: round(v, 3) for k, v in stats.timings.items()},
                "wall_s": round(time.perf_counter() - started, 3),
            },
        )
        ctx.set_provenance(provenance)


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


def _analyse(
    ctx: Any,
    batch: list[Prepared],
    detector: Detector,
    params: Params,
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
            ctx.emit({**failed, "error": {"code": code, "message": message}}, failed=True)
        elif prepared.cached is not None:
            stats.hits += 1
            _emit_ok(ctx, prepared, prepared.cached, cached=True)
        else:
            ready.append(prepared)
    if not ready:
        return
    started = time.perf_counter()
    predictions = detector.predict([p.image for p in ready], params.confidence, params.iou)
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


def _emit_ok(ctx: Any, prepared: Prepared, decoded: list[dict[str, Any]], cached: bool) -> None:
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
    ctx.emit(item)

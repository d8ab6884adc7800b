"""The vectorize job's work in the worker (declared in model/jobs/vectorize/__init__.py).

Pages (image URLs, uploads, IIIF canvases) go through detect's pipeline: planned units, a
bounded prefetch, the result cache, one item per page as soon as it is done (a cancel or a
timeout keeps what is finished). A detect task's illustrations are regions: each is asked from
its page's IIIF image service when the page came from one, else cut from the page fetched again;
its primitives are given in the page's coordinates.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from model.jobs.context import JobContext
from model.jobs.contract import SourceTask
from model.jobs.crops import detect_pages
from model.jobs.items import DetectPage
from model.jobs.loading import Prepared, page_item
from model.jobs.pages import Pages, open_pages
from model.jobs.vectorize import METHOD, VERSION, VectorizeParams
from model.jobs.vectorize.items import VectorizeItem
from model.jobs.vectorize.processes import analyse_gray, analysis_executor, find_primitives
from model.jobs.vectorize.transform import Affine, page_transform, transformed
from model.pipeline.cache import DetectionCache, params_digest
from model.sources.fetch import FetchError
from model.sources.images import ImageDecodeError, decode_within


def analyse(image: Image.Image, params: VectorizeParams) -> list[dict[str, Any]]:
    """Primitives in the given image's pixels, found in this process."""
    found, _ = find_primitives(*_method_args(image, params))
    return found


def grey(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)


def _method_args(
    image: Image.Image, params: VectorizeParams
) -> tuple[np.ndarray, dict[str, float], frozenset[str]]:
    """What the method (processes.find_primitives) takes: grey pixels, thresholds, kinds."""
    return grey(image), params.thresholds(), frozenset(params.primitives)


def run_vectorize(ctx: JobContext) -> None:
    params = VectorizeParams(**ctx.spec.params)
    provenance: dict[str, Any] = {
        "method": METHOD,
        "version": VERSION,
        "params": params.model_dump(),
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__},
    }
    ctx.set_provenance(provenance)
    sources = ctx.spec.of_kind(SourceTask)
    with open_pages(ctx, provenance) as pages:
        if sources:
            _regions(ctx, sources[0].task_id, params, pages)
        else:
            _pages(ctx, params, pages)


# --- pages --------------------------------------------------------------------------------------


def _pages(ctx: JobContext, params: VectorizeParams, pages: Pages) -> None:
    settings = ctx.resources.settings
    plan = pages.plan_task(keep_manifests=True)
    ctx.set_total(len(plan.units))
    pending = pages.pending(plan.units)
    loader = pages.loader(
        cache=pages.detection_cache(),
        params_key=params_digest(f"{METHOD}-{VERSION}", params.model_dump()),
        max_side=params.max_side,
        min_side=params.max_side,
        analyse_side=params.max_side,
    )
    # The pages of a batch are analysed side by side in child processes (processes.py: the
    # method holds the GIL), on this process's share of the cores (as detect's inference
    # threads: worker.concurrency tasks share the machine).
    size = max(1, min(settings.inference_threads(), settings.worker.batch_size))
    executor = analysis_executor(size)
    # A batch is emitted while the next one is analysed, so no child waits for the slowest
    # page of a batch (in order: the items and the progress stay page by page).
    queued: deque[tuple[Prepared, Future[Any] | None]] = deque()
    try:
        with pages.batches(pending, loader) as batches:
            for batch in batches:
                ctx.check_cancel()
                submitted = [(prepared, _submit(executor, prepared, params)) for prepared in batch]
                _emit_all(ctx, queued, loader.cache)
                queued.extend(submitted)
            _emit_all(ctx, queued, loader.cache)
    finally:
        for _prepared, future in queued:  # a cancel or a timeout drops what is queued
            if future is not None:
                future.cancel()


def _emit_all(
    ctx: JobContext, queued: deque[tuple[Prepared, Future[Any] | None]], cache: DetectionCache
) -> None:
    while queued:
        ctx.check_cancel()
        prepared, future = queued[0]
        _page_done(ctx, prepared, _analysed(prepared, future), cache)
        queued.popleft()


def _submit(executor: Executor, prepared: Prepared, params: VectorizeParams) -> Future[Any] | None:
    """The page's analysis, started (None: failed or cached, nothing to analyse)."""
    if prepared.error is not None or prepared.cached is not None or prepared.image is None:
        return None
    image, prepared.image = prepared.image, None
    return executor.submit(analyse_gray, *_method_args(image, params))


def _analysed(prepared: Prepared, future: Future[Any] | None) -> list[dict[str, Any]] | None:
    """The page's primitives in the decoded image's pixels (None: failed or cached)."""
    if future is None:
        return None
    found, seconds = future.result()
    prepared.timings["analyse_s"] = seconds
    return transformed(found, Affine.scale(1 / prepared.scale))


def _page_done(
    ctx: JobContext, prepared: Prepared, found: list[dict[str, Any]] | None, cache: DetectionCache
) -> None:
    if prepared.error is not None:
        code, message = prepared.error
        failed = {**prepared.item, "status": "failed", "primitives": []}
        failed["error"] = {"code": code, "message": message}
        ctx.emit(VectorizeItem.model_validate(failed), failed=True)
        return
    width, height = prepared.decoded_size
    cached = prepared.cached is not None
    if prepared.cached is not None:
        decoded = prepared.cached  # in the decoded image's pixels
    else:
        assert found is not None
        decoded = found
        if prepared.cache_key:
            cache.put(prepared.cache_key, {"width": width, "height": height, "detections": decoded})
    item = page_item(prepared, cached, primitives=transformed(decoded, page_transform(prepared)))
    ctx.emit(VectorizeItem.model_validate(item))


# --- a detect task's regions --------------------------------------------------------------------


@dataclass(frozen=True)
class _Region:
    index: int
    page: DetectPage  # the detect task's item
    box: list[float]  # x, y, w, h in the page item's coordinates
    label: str
    confidence: float


def _copy_manifests(
    ctx: JobContext, task_id: str, source: dict[str, Any], provenance: dict[str, Any]
) -> None:
    """The detect task's manifests, so that this result opens in a IIIF viewer too."""
    provenance["manifests"] = source.get("manifests", [])
    provenance["source_task"] = task_id
    for manifest in provenance["manifests"]:
        text = ctx.kept_manifest(task_id, manifest["index"])
        if text is not None:
            ctx.keep_manifest(manifest["index"], text)


def _regions(ctx: JobContext, task_id: str, params: VectorizeParams, pages: Pages) -> None:
    detected, source = detect_pages(ctx, task_id)
    _copy_manifests(ctx, task_id, source, pages.provenance)
    regions = [
        _Region(0, page, d.xywh, d.label, d.confidence)
        for page in detected
        if page.status == "ok"
        for d in page.detections
    ]
    regions = [_Region(i, r.page, r.box, r.label, r.confidence) for i, r in enumerate(regions)]
    ctx.set_total(len(regions))
    done = ctx.finished_indices()
    fetcher, settings = pages.fetcher, pages.settings
    page_cache: dict[str, Image.Image] = {}  # one page fetched once for all its regions
    for region in regions:
        if region.index in done:
            continue
        ctx.check_cancel()
        item = _region_item(region)
        try:
            started = time.perf_counter()
            image, to_page, asked = _region_image(region, fetcher, settings, params, page_cache)
            item["region"]["image_url"] = asked
            item["timings"] = {"fetch_s": round(time.perf_counter() - started, 4)}
        except (FetchError, ImageDecodeError) as exc:
            error = {"code": exc.code, "message": exc.message}
            failed = {**item, "status": "failed", "primitives": [], "error": error}
            ctx.emit(VectorizeItem.model_validate(failed), True)
            continue
        ctx.check_cancel()
        started = time.perf_counter()
        found = analyse(image, params)
        item["timings"]["analyse_s"] = round(time.perf_counter() - started, 4)
        done_item = {**item, "status": "ok", "primitives": transformed(found, to_page)}
        ctx.emit(VectorizeItem.model_validate(done_item))


def _region_item(region: _Region) -> dict[str, Any]:
    page = region.page
    keep = (
        "source",
        "canvas_id",
        "label",
        "manifest",
        "canvas_index",
        "canvas_width",
        "canvas_height",
        "coordinates",
        "image_url",
        "width",
        "height",
    )
    item = page.model_dump(mode="json", include=set(keep), exclude_unset=True)
    item.update(
        index=region.index,
        page_index=page.index,
        region={
            "xywh": [round(v) for v in region.box],
            "label": region.label,
            "confidence": region.confidence,
        },
        cached=False,
    )
    return item


def _region_image(
    region: _Region,
    fetcher: Any,
    settings: Any,
    params: VectorizeParams,
    page_cache: dict[str, Image.Image],
) -> tuple[Image.Image, Affine, str]:
    """The region's pixels (at most max_side), the map from them to page coordinates and the
    URL they were asked from (the region itself, or the whole page)."""
    page = region.page
    x, y, w, h = region.box
    base = page.image_service
    if base is not None:
        sx, sy = page.full_size_scale()
        left, top = max(0, round(x * sx)), max(0, round(y * sy))
        width, height = max(1, round(w * sx)), max(1, round(h * sy))
        side = params.max_side
        # "w," / ",h" (level 1), never larger than the region ("!w,h" is level 2).
        size = f"{min(width, side)}," if width >= height else f",{min(height, side)}"
        url = f"{base}/{left},{top},{width},{height}/{size}/0/default.jpg"
        data = fetcher.get(url).content
        image, _size, _scale = decode_within(data, settings.fetch.max_pixels, side, reduce=False)
        # fetched pixels -> full image pixels -> page coordinates
        fx, fy = width / image.width, height / image.height
        return image, Affine(fx / sx, fy / sy, left / sx, top / sy), url
    url = page.image_url or page.source
    if not str(url).startswith(("http://", "https://")):
        raise FetchError("source_image_unavailable", "the page was an upload; it is gone")
    if url not in page_cache:
        data = fetcher.get(url).content
        page_cache.clear()  # regions come page by page: keep one page only
        page_cache[url] = decode_within(data, settings.fetch.max_pixels, None, reduce=False)[0]
    full = page_cache[url]
    base_w = page.canvas_width or page.width or full.width
    base_h = page.canvas_height or page.height or full.height
    kx, ky = full.width / base_w, full.height / base_h  # page coordinates -> fetched pixels
    box = (round(x * kx), round(y * ky), round((x + w) * kx), round((y + h) * ky))
    crop = full.crop(box)
    k = min(1.0, params.max_side / max(crop.width, crop.height, 1))
    if k < 1.0:
        crop = crop.resize((max(1, round(crop.width * k)), max(1, round(crop.height * k))))
    return crop, Affine(1 / (k * kx), 1 / (k * ky), box[0] / kx, box[1] / ky), url

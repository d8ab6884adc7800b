"""Bring one unit of work to the point where only inference is left (runs in prefetch threads):
pick the image request (IIIF size negotiation), fetch, hash, look up the cache, decode, shrink.

Every outcome is a `Prepared` — failures included — so the consumer can record each page.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from model.iiif.image_api import ImageRequest
from model.iiif.negotiate import ServiceInfo, plan_request
from model.iiif.presentation import Canvas
from model.jobs import UploadMissing
from model.jobs.units import WorkUnit
from model.pipeline.cache import BoundedCache
from model.pipeline.memory import process_budget
from model.pipeline.prefetch import Prefetcher
from model.redis_client import unreachable
from model.sources.fetch import FetchError
from model.sources.images import ImageDecodeError, decode_within

# Answers to a computed request that mean "not like that" (bad request, forbidden, not
# implemented): the service's info.json says what it can do. A 404 means the image is missing.
REPLAN_STATUSES = {400, 403, 501}


@dataclass
class Prepared:
    unit: WorkUnit
    item: dict[str, Any]  # the result item so far
    image: Image.Image | None = None  # what the detector sees (None: failed or cached)
    scale: float = 1.0  # analysed image / decoded image
    decoded_size: tuple[int, int] = (0, 0)
    cache_key: str | None = None
    cached: list[dict[str, Any]] | None = None  # detections (xyxy in decoded pixels)
    error: tuple[str, str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # CPU seconds the loading thread spent fetching, and decoding and shrinking (the benchmark's
    # CPU table compares them with a script doing the same; wall time counts waits too).
    fetch_cpu_s: float = 0.0
    decode_cpu_s: float = 0.0
    # Not the page's fault (Redis unreachable): the attempt stops on it, the page is not failed.
    fault: Exception | None = None


@dataclass
class PageLoader:
    fetcher: Any
    services: ServiceInfo
    cache: BoundedCache
    params_key: str
    max_side: int
    min_side: int
    max_pixels: int
    # Longest side handed to the model; None: max_side. Detect passes the detector's input size:
    # one shrink (at reduced JPEG scale when possible) instead of decoding everything, shrinking
    # to max_side and letting the letterbox shrink again — the largest CPU cost per page after
    # inference on a 2-core worker (bench/README.md).
    analyse_side: int | None = None
    uploads: Any = None  # model.uploads.UploadStore, for units that are uploads

    def __call__(self, unit: WorkUnit) -> Prepared:
        prepared = Prepared(unit, base_item(unit))
        try:
            self._load(prepared)
        except (FetchError, ImageDecodeError, UploadMissing) as exc:
            prepared.error = (exc.code, exc.message)
        return prepared

    def failed(self, unit: WorkUnit, exc: Exception) -> Prepared:
        """An unexpected error while loading one page fails that page only; Redis out of reach
        is the service's fault, not the page's (page_batches raises it)."""
        error = ("load_error", f"{type(exc).__name__}: {exc}")
        fault = exc if unreachable(exc) else None
        return Prepared(unit, base_item(unit), error=error, fault=fault)

    def _load(self, prepared: Prepared) -> None:
        unit, item = prepared.unit, prepared.item
        started, cpu_started = time.perf_counter(), time.thread_time()
        if unit.canvas is not None:
            data = self._fetch_canvas(unit.canvas.canvas, item)
        elif unit.url is not None:
            data = self.fetcher.get(unit.url).content
        else:
            assert unit.upload is not None
            data = self.uploads.read(unit.upload)
        prepared.timings["fetch_s"] = time.perf_counter() - started
        prepared.fetch_cpu_s = time.thread_time() - cpu_started
        if unit.upload is None:
            item["bytes"] = len(data)
        prepared.cache_key = self.cache.key(hashlib.sha256(data).hexdigest(), self.params_key)
        hit = self.cache.get(prepared.cache_key)
        if hit is not None:
            prepared.decoded_size = (hit["width"], hit["height"])
            prepared.cached = hit["detections"]
            return
        started, cpu_started = time.perf_counter(), time.thread_time()
        # Detect may decode JPEGs reduced (analyse_side); similarity keeps a full decode's
        # pixels. Either way the process's decode budget is held only until the page is shrunk.
        prepared.image, prepared.decoded_size, prepared.scale = decode_within(
            data,
            self.max_pixels,
            self.analyse_side or self.max_side,
            process_budget(),
            reduce=bool(self.analyse_side),
        )
        del data
        prepared.timings["decode_s"] = time.perf_counter() - started
        prepared.decode_cpu_s = time.thread_time() - cpu_started

    def _fetch_canvas(self, canvas: Canvas, item: dict[str, Any]) -> bytes:
        """The canvas's image; a computed request the server refuses is planned again from the
        service's info.json, once (the manifest declared more than the server does)."""
        request = self._plan(canvas, read_info=False)
        try:
            return self._fetch(request, item)
        except FetchError as exc:
            if request.method != "computed" or exc.status not in REPLAN_STATUSES:
                raise
            refused = exc
        again = self._plan(canvas, read_info=True)
        if again.url == request.url:
            raise refused  # info.json says the same: asking again would be refused again
        note = f"computed request refused ({refused.message}): planned again"
        return self._fetch(replace(again, notes=[note, *again.notes]), item)

    def _plan(self, canvas: Canvas, read_info: bool) -> ImageRequest:
        assert canvas.image is not None
        size = (canvas.width, canvas.height)
        return plan_request(
            canvas.image, self.services, self.max_side, self.min_side, size, read_info
        )

    def _fetch(self, request: ImageRequest, item: dict[str, Any]) -> bytes:
        item.update(
            source=request.url,
            image_url=request.url,
            request={
                "method": request.method,
                "choice": request.choice,
                "expected_width": request.width,
                "expected_height": request.height,
                "full_width": request.full_width,
                "full_height": request.full_height,
                "service_id": request.service_id,
            },
        )
        if request.notes:
            item["notes"] = request.notes
        return self.fetcher.get(request.url).content


def base_item(unit: WorkUnit) -> dict[str, Any]:
    item: dict[str, Any] = {"index": unit.index, "source": unit.source}
    if unit.canvas is not None:
        canvas = unit.canvas.canvas
        item.update(
            canvas_id=canvas.id,
            label=canvas.label,
            manifest=unit.canvas.manifest.index,
            canvas_index=unit.canvas.position,
            canvas_width=canvas.width,
            canvas_height=canvas.height,
        )
    return item


def decoded_boxes(prepared: Prepared, detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model's boxes, found in the analysed image's pixels, in the decoded image's."""
    return [
        {
            "xyxy": [round(v / prepared.scale, 2) for v in d["xyxy"]],
            "confidence": round(float(d["confidence"]), 4),
            "label": d["label"],
        }
        for d in detections
    ]


def page_item(prepared: Prepared, cached: bool, **fields: Any) -> dict[str, Any]:
    """A loaded page's result item: what loading recorded (source, IIIF request, canvas), the
    decoded size, the job's `fields` and the page's stage timings. A canvas's item says its
    boxes are in canvas coordinates, and gives the canvas size (the image's if none declared)."""
    width, height = prepared.decoded_size
    item = {
        **prepared.item,
        "status": "ok",
        "width": width,
        "height": height,
        "cached": cached,
        **fields,
        "timings": {k: round(v, 4) for k, v in prepared.timings.items()},
    }
    if prepared.unit.canvas is not None:
        item["coordinates"] = "canvas"
        item["canvas_width"] = item.get("canvas_width") or width
        item["canvas_height"] = item.get("canvas_height") or height
    return item


def to_output_box(prepared: Prepared, xyxy: list[float]) -> list[int]:
    """A box in decoded-image pixels, as x, y, w, h in the item's coordinate space: the canvas
    for IIIF canvases (the image may be smaller, larger, or painted on part of it), else the
    decoded image."""
    x1, y1, x2, y2 = xyxy
    unit = prepared.unit
    width, height = prepared.decoded_size
    if unit.canvas is not None and width and height:
        canvas = unit.canvas.canvas
        region = canvas.image.region if canvas.image else None
        if region is None:
            region = (0, 0, canvas.width or width, canvas.height or height)
        rx, ry, rw, rh = region
        sx, sy = rw / width, rh / height
        x1, x2 = rx + x1 * sx, rx + x2 * sx
        y1, y2 = ry + y1 * sy, ry + y2 * sy
    return [round(x1), round(y1), round(x2 - x1), round(y2 - y1)]


@contextmanager
def page_batches(
    units: list[WorkUnit], loader: PageLoader, settings: Any, scope: Any, check_cancel: Any
) -> Iterator[Iterator[list[Prepared]]]:
    """Pages loaded ahead in threads (a bounded prefetch), handed out in batches for the model.
    The cancel flag is checked while waiting for slow downloads; leaving the block (the end, a
    cancel, a timeout, an error) cancels `scope`, which stops the downloads still in flight."""
    with Prefetcher(
        units,
        loader,
        loader.failed,
        threads=settings.pipeline.download_threads,
        depth=settings.pipeline.prefetch_depth,
        on_close=scope.cancel,
    ) as prefetch:

        def next_batch() -> list[Prepared]:
            batch = prefetch.next_batch(settings.worker.batch_size, check_cancel)
            fault = next((p.fault for p in batch if p.fault is not None), None)
            if fault is not None:
                raise fault
            return batch

        yield iter(next_batch, [])

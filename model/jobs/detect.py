"""Detect illustrations on a list of images (URLs or uploads).

Each image becomes one result item as soon as its batch is done, so a timeout or cancel keeps
everything finished so far. A page that cannot be fetched or decoded is a failed item, not a
failed job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.jobs import JobFailed
from model.sources.fetch import FetchError
from model.sources.images import ImageDecodeError, decode_image, fit_within

# Without an explicit max_side, images are shrunk to this many times the model's input size
# before inference: enough detail for the letterbox resize, far fewer pixels to move.
MAX_SIDE_FACTOR = 2


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model name from GET /models; default if omitted")
    confidence: float = Field(0.25, ge=0.0, le=1.0, description="Minimum detection confidence")
    iou: float = Field(0.45, ge=0.0, le=1.0, description="IoU threshold of non-maximum suppression")
    max_side: int | None = Field(
        None, ge=32, le=20000, description="Longest image side analysed (px); default 2x model size"
    )


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_urls: list[str] = Field(default_factory=list, description="http(s) URLs of images")

    @field_validator("image_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        # Only the shape is checked here; the worker's fetcher decides which hosts it may reach.
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url[:200]!r}")
        return urls


class Detector(Protocol):
    name: str
    imgsz: int

    def predict(
        self, images: list[Image.Image], confidence: float, iou: float
    ) -> list[list[dict[str, Any]]]: ...


def _load(source: dict[str, Any], resources: dict[str, Any]) -> tuple[bytes, float]:
    started = time.perf_counter()
    if "url" in source:
        data = resources["fetcher"].get(source["url"]).content
    else:
        data = Path(source["upload"]).read_bytes()
    return data, time.perf_counter() - started


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _source_label(source: dict[str, Any]) -> str:
    return source.get("url") or f"upload:{source.get('filename', '')}"


def run(ctx: Any) -> None:
    params = Params(**ctx.spec.get("params", {}))
    resources = ctx.resources
    name = params.model or resources["default_model"]
    detector: Detector | None = resources["detectors"].get(name)
    if detector is None:
        raise JobFailed("model_unavailable", f"model {name!r} is not loaded on this worker")
    max_side = params.max_side or detector.imgsz * MAX_SIDE_FACTOR
    ctx.set_provenance({**resources["provenance"](detector), "params": params.model_dump()})

    inputs: list[dict[str, Any]] = ctx.spec["inputs"]
    finished = ctx.finished_indices()
    pending = [(i, src) for i, src in enumerate(inputs) if i not in finished]
    max_pixels = resources["settings"].fetch.max_pixels

    for batch in _batches(pending, resources["settings"].worker.batch_size):
        ctx.check_cancel()
        ready: list[tuple[dict[str, Any], Image.Image, float]] = []
        for index, source in batch:
            item: dict[str, Any] = {"index": index, "source": _source_label(source)}
            try:
                data, fetch_s = _load(source, resources)
                started = time.perf_counter()
                image = decode_image(data, max_pixels)
                item.update(width=image.width, height=image.height)
                small, scale = fit_within(image, max_side)
                item["timings"] = {"fetch_s": fetch_s, "decode_s": time.perf_counter() - started}
                ready.append((item, small, scale))
            except (FetchError, ImageDecodeError) as exc:
                ctx.emit(
                    {
                        **item,
                        "status": "failed",
                        "detections": [],
                        "error": {"code": exc.code, "message": exc.message},
                    },
                    failed=True,
                )
        if not ready:
            continue
        started = time.perf_counter()
        predictions = detector.predict([img for _, img, _ in ready], params.confidence, params.iou)
        per_image_s = (time.perf_counter() - started) / len(ready)
        for (item, _, scale), detections in zip(ready, predictions, strict=True):
            item["timings"]["inference_s"] = per_image_s
            item["detections"] = [_to_original(d, scale) for d in detections]
            item["status"] = "ok"
            ctx.emit(item)


def _to_original(detection: dict[str, Any], scale: float) -> dict[str, Any]:
    """Boxes come in the analysed image's pixels; report them in the original image's."""
    x1, y1, x2, y2 = (v / scale for v in detection["xyxy"])
    return {
        "xywh": [round(x1), round(y1), round(x2 - x1), round(y2 - y1)],
        "confidence": round(float(detection["confidence"]), 4),
        "label": detection["label"],
    }

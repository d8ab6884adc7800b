"""The GPU limit: the shipped model's `predict` in one process, nothing else (the CPU limit,
which also decodes, is `bench/raw_e2e.py`).

Pages are prepared exactly as the worker prepares them — the same manifest parsing, size
negotiation (`max_side`), fetch, decode and resize code (`model.jobs.loading.PageLoader`) — and
kept in memory, so only inference is timed. Both backends run over the same pages: their speed
and their boxes are compared.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bench.raw_e2e import RecordingFetcher, worker_loader
from model.jobs.contract import ManifestUrl, TaskSpec
from model.jobs.units import plan_units
from model.settings import Settings
from model.sources.fetch import SafeFetcher


@dataclass
class PreparedPages:
    images: list[Image.Image]
    bytes_fetched: int
    methods: list[str]  # how each request was planned ("computed", "info.json", "sizes", ...)
    bodies: dict[str, bytes]  # every body read (manifest, images): raw end to end replays them


def prepare(manifest_url: str, imgsz: int, settings: Settings) -> PreparedPages:
    """Download and shrink the manifest's pages with the worker's own code (no timing here)."""
    fetcher = RecordingFetcher(SafeFetcher.from_settings(settings.fetch))
    plan = plan_units(TaskSpec(inputs=[ManifestUrl(url=manifest_url)]), fetcher, settings)
    loader = worker_loader(fetcher, settings, imgsz)
    images, methods, fetched = [], [], 0
    for unit in plan.units:
        prepared = loader(unit)
        if prepared.error or prepared.image is None:
            raise RuntimeError(f"raw baseline could not load {unit.source}: {prepared.error}")
        images.append(prepared.image)
        methods.append(prepared.item.get("request", {}).get("method", "image"))
        fetched += prepared.item.get("bytes", 0)
    return PreparedPages(images, fetched, methods, fetcher.bodies)


def load_detectors(data_dir: Path, backends: list[str]) -> tuple[dict[str, Any], str]:
    """The worker's detector class, once per backend, and the backend the worker would pick
    (`inference.backend: auto`). Imports torch: call only when needed."""
    from model.inference.offline import configure_offline

    configure_offline(data_dir / "ultralytics")
    import torch

    from model.inference.detector import YoloDetector, choose_backend
    from model.inference.registry import discover

    settings = Settings()
    info = discover(settings.model_dirs)[settings.models.default]
    detectors = {}
    for name in backends:
        detector = YoloDetector(info, name)
        detectors[detector.backend] = detector  # "onnx" without an .onnx file falls back
    return detectors, choose_backend("auto", info, torch.cuda.is_available())


def time_backend(
    detector: Any, images: list[Image.Image], batch_size: int, confidence: float, iou: float
) -> dict[str, Any]:
    """One pass over all pages in the worker's batch size: pages/s and per-page latency."""
    latencies: list[float] = []
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        t0 = time.perf_counter()
        detector.predict(batch, confidence, iou)
        latencies.extend([(time.perf_counter() - t0) / len(batch)] * len(batch))
    wall = time.perf_counter() - started
    return {
        "pages_per_s": len(images) / wall,
        "wall_s": wall,
        "latency_median_ms": statistics.median(latencies) * 1000,
    }


def predictions(detector: Any, images: list[Image.Image], confidence: float, iou: float) -> list:
    return [detector.predict([image], confidence, iou)[0] for image in images]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare_boxes(first: list[list[dict]], second: list[list[dict]]) -> dict[str, Any]:
    """Boxes of two backends on the same pages, matched greedily by IoU (>= 0.5, same label):
    the largest coordinate and confidence differences of matched boxes, and what did not match
    (with the highest confidence among those: a box near the threshold may exist in one only)."""
    max_px = max_conf = 0.0
    matched = unmatched = 0
    unmatched_conf = 0.0
    for boxes_a, boxes_b in zip(first, second, strict=True):
        free = list(boxes_b)
        for box in sorted(boxes_a, key=lambda d: -d["confidence"]):
            scored = [(_iou(box["xyxy"], o["xyxy"]), o) for o in free if o["label"] == box["label"]]
            best = max(scored, key=lambda pair: pair[0], default=(0.0, None))
            if best[1] is None or best[0] < 0.5:
                unmatched += 1
                unmatched_conf = max(unmatched_conf, box["confidence"])
                continue
            other = best[1]
            free.remove(other)
            matched += 1
            diffs = [abs(x - y) for x, y in zip(box["xyxy"], other["xyxy"], strict=True)]
            max_px = max(max_px, *diffs)
            max_conf = max(max_conf, abs(box["confidence"] - other["confidence"]))
        unmatched += len(free)
        unmatched_conf = max([unmatched_conf, *(o["confidence"] for o in free)])
    return {
        "matched_boxes": matched,
        "unmatched_boxes": unmatched,
        "max_unmatched_confidence": round(unmatched_conf, 4),
        "max_box_diff_px": round(max_px, 3),
        "max_confidence_diff": round(max_conf, 4),
        "coordinates": "pixels of the analysed image (longest side max_side)",
    }

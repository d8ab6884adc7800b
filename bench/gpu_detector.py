"""GPU check of the shipped detector on a lent GPU machine: backend choice, boxes against ONNX
Runtime on the CPU, recall against known boxes, and images/s by batch size.

Run from the project root on the GPU box (its image has torch, not our other packages):
    python3 -m pip install --no-deps --target /tmp/site ultralytics==8.4.190 ultralytics-thop
    PYTHONPATH=/tmp/site python3 bench/gpu_detector.py
One run's output: bench/results/latest-gpu-detector.md.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

PAGES = 64
BATCHES = (1, 4, 16, 64)


def _load_model_package() -> None:
    """model/__init__ builds the Flask side (flask, redis: absent on the GPU box); the detector
    modules need none of it, so make the package importable without running its __init__."""
    package = types.ModuleType("model")
    package.__path__ = [str(Path.cwd() / "model")]
    sys.modules["model"] = package
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", "/tmp/yolo-config")


def _iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def main() -> dict[str, Any]:
    _load_model_package()
    import torch

    from model.inference.detector import YoloDetector
    from model.inference.registry import discover
    from synthetic import render_page

    info = discover([Path("model/weights")])["illustrations-demo"]
    pages = [render_page(910_000 + i, 1000, 1400) for i in range(PAGES)]
    images = [p.image for p in pages]
    gpu = YoloDetector(info, "auto")
    cpu = YoloDetector(info, "onnx", cpu_threads=4)
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "auto_backend": [gpu.backend, gpu.device],
    }
    on_gpu = gpu.predict(images[:16], 0.25, 0.45)
    on_cpu = cpu.predict(images[:16], 0.25, 0.45)
    agreement = [
        max((_iou(d["xyxy"], e["xyxy"]) for e in cpu_dets), default=0.0)
        for gpu_dets, cpu_dets in zip(on_gpu, on_cpu, strict=True)
        for d in gpu_dets
    ]
    out["gpu_vs_onnx_cpu_min_iou"] = round(min(agreement), 4) if agreement else None
    out["boxes_gpu"], out["boxes_cpu"] = sum(map(len, on_gpu)), sum(map(len, on_cpu))
    truths = [(x, y, x + w, y + h) for page in pages[:16] for (x, y, w, h) in page.boxes]
    found = sum(
        max((_iou(t, d["xyxy"]) for d in dets), default=0.0) >= 0.5
        for page, dets in zip(pages[:16], on_gpu, strict=True)
        for t in [(x, y, x + w, y + h) for (x, y, w, h) in page.boxes]
    )
    out["recall_iou50_16pages"] = round(found / len(truths), 3)
    for batch in BATCHES:
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            started = time.perf_counter()
            gpu.predict(images[:batch], 0.25, 0.45)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        out[f"gpu_batch{batch}_images_per_s"] = round(batch / statistics.median(times), 1)
    started = time.perf_counter()
    cpu.predict(images[:16], 0.25, 0.45)
    out["cpu_onnx_4threads_images_per_s"] = round(16 / (time.perf_counter() - started), 1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))

"""The domain-shift benchmark's figures checked through the service itself, as a user would get
them: the fine-tuned weights imported into a real stack (`models add`: the same checks, ONNX
export and backend choice as any imported model), then, for the shipped and the fine-tuned
model on the held-out pages,
- an `evaluate` task with the pages as a YOLO dataset zip upload (its own mAP50, P/R/F1);
- a `detect` task on the same images (uploads, confidence 0.001 so every box counts for mAP),
  its boxes scored against the labels with evaluate's metrics (model/jobs/evaluate/metrics.py).

ultralytics' `val()` (bench/train.py's first table), evaluate and detect should agree within
what their pre-processing differs in (letterbox vs the service's resize, NMS settings).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench.stack import bench_key, start, wait_terminal
from model.jobs.evaluate.metrics import Box, summarise
from model.jobs.train.dataset import yolo_zip
from model.jobs.train.yolo_data import CLASS_NAMES, images_of
from testkit.stack import Api

SHIPPED_NAME = "illustrations-demo"
IOU, CONFIDENCE = 0.5, 0.25  # evaluate's defaults: P/R/F1 at detect's default confidence
TASK_TIMEOUT_S = 1800


def _truths(folder: Path, image: Path, size: tuple[int, int]) -> list[Box]:
    width, height = size
    boxes = []
    for line in (folder / "labels" / f"{image.stem}.txt").read_text().splitlines():
        cls, cx, cy, w, h = line.split()
        box = ((float(cx) - float(w) / 2) * width, (float(cy) - float(h) / 2) * height)
        boxes.append(Box(CLASS_NAMES[int(cls)], (*box, float(w) * width, float(h) * height)))
    return boxes


def _done(api: Api, task_id: str) -> dict[str, Any]:
    body, _ = wait_terminal(api, task_id, poll_s=1.0, timeout_s=TASK_TIMEOUT_S)
    if body.get("state") != "SUCCEEDED":
        raise RuntimeError(f"task {task_id} ended {body.get('state')}: {body.get('error')}")
    return body


def _evaluate(api: Api, model: str, dataset: bytes) -> dict[str, Any]:
    resp = api.request(
        "POST",
        "/task",
        data={"type": "evaluate", "params": json.dumps({"model": model, "iou": IOU})},
        files=[("dataset", ("heldout.zip", dataset, "application/zip"))],
        timeout=120,
    )
    resp.raise_for_status()
    return _done(api, resp.json()["task_id"])["result"]["evaluation"]["overall"]


def _detect(api: Api, model: str, folder: Path) -> dict[str, Any]:
    from PIL import Image

    images = images_of(folder)
    uploads = [(p.name, p.read_bytes()) for p in images]
    resp = api.upload(uploads, {"model": model, "confidence": 0.001}, timeout="1800")
    resp.raise_for_status()
    items = _done(api, resp.json()["task_id"])["result"]["items"]
    scored = []
    for path, item in zip(images, sorted(items, key=lambda i: i["index"]), strict=True):
        with Image.open(path) as image:
            truths = _truths(folder, path, image.size)
        found = [
            Box(d["label"], tuple(d["xywh"]), float(d["confidence"]))  # type: ignore[arg-type]
            for d in item.get("detections", [])
        ]
        scored.append((found, truths))
    return summarise(scored, IOU, CONFIDENCE)["overall"]


def verify(weights: Path, name: str, heldout: Path) -> dict[str, dict[str, Any]]:
    """{model: {"evaluate": overall, "detect": overall}} for the shipped and the new model."""
    with tempfile.TemporaryDirectory(prefix="bench-train-stack-") as data_dir:
        stack, _notes = start(Path(data_dir))
        try:
            added = stack.cli("models", "add", str(weights), "--name", name, timeout_s=600)
            if added.returncode != 0:
                raise RuntimeError(f"models add failed: {added.stderr[-2000:]}")
            api = stack.client(bench_key(stack))
            dataset = yolo_zip(heldout, CLASS_NAMES)
            return {
                model: {
                    "evaluate": _evaluate(api, model, dataset),
                    "detect": _detect(api, model, heldout),
                }
                for model in (SHIPPED_NAME, name)
            }
        finally:
            stack.stop()


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | through | mAP50 | mAP50-95 | precision | recall | F1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, routes in figures.items():
        for route, o in routes.items():
            lines.append(
                f"| {model} | {route} | {o['mAP50']:.3f} | {o['mAP50_95']:.3f} | "
                f"{o['precision']:.3f} | {o['recall']:.3f} | {o['f1']:.3f} |"
            )
    return "\n".join(lines)

"""What the seed systems do: one page after another, downloaded at full size with a 0.25 s pause,
decoded whole and handed to ultralytics with the torch weights; the model is loaded again for
every image (variant A) or once per task (variant B). No prefetch, no size negotiation."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import requests
from PIL import Image

PAUSE_S = 0.25


def run(
    urls: list[str],
    weights: Path,
    imgsz: int,
    device: str,
    reload_per_image: bool,
    confidence: float = 0.25,
    iou: float = 0.45,
) -> dict[str, Any]:
    from ultralytics import YOLO

    stages = {"download_s": 0.0, "pause_s": 0.0, "decode_s": 0.0, "load_s": 0.0, "predict_s": 0.0}
    downloaded = 0
    boxes = 0

    def load() -> Any:
        t0 = time.perf_counter()
        model = YOLO(str(weights), task="detect")
        stages["load_s"] += time.perf_counter() - t0
        return model

    started = time.perf_counter()
    model = None if reload_per_image else load()
    with requests.Session() as session:
        for url in urls:
            t0 = time.perf_counter()
            data = session.get(url, timeout=60).content
            downloaded += len(data)
            t1 = time.perf_counter()
            time.sleep(PAUSE_S)
            t2 = time.perf_counter()
            image = Image.open(io.BytesIO(data)).convert("RGB")
            t3 = time.perf_counter()
            stages["download_s"] += t1 - t0
            stages["pause_s"] += t2 - t1
            stages["decode_s"] += t3 - t2
            if reload_per_image:
                model = load()
            t4 = time.perf_counter()
            result = model.predict(  # type: ignore[union-attr]
                image, imgsz=imgsz, conf=confidence, iou=iou, device=device, verbose=False
            )
            stages["predict_s"] += time.perf_counter() - t4
            boxes += len(result[0].boxes)
    wall = time.perf_counter() - started
    return {
        "pages": len(urls),
        "pages_per_s": len(urls) / wall,
        "wall_s": wall,
        "bytes_downloaded": downloaded,
        "boxes": boxes,
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "model_loads": len(urls) if reload_per_image else 1,
    }

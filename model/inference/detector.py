"""Loaded detectors (worker process only: this module imports torch and ultralytics).

Backend choice (`inference.backend`): torch on CUDA when a GPU is visible; on CPU, ONNX Runtime
when the model ships an .onnx file (2-3x faster than torch there), else torch.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np
from PIL import Image

from model.inference.registry import ModelInfo

log = logging.getLogger(__name__)
LOAD_COUNT = 0  # models loaded by this process: lets tests prove a cancel did not reload


def choose_backend(requested: str, info: ModelInfo, cuda: bool) -> str:
    if requested in ("torch", "onnx"):
        return requested if requested == "torch" or info.onnx else "torch"
    if cuda:
        return "torch"
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    return "onnx" if info.onnx and has_ort else "torch"


def _limit_opencv_threads(threads: int) -> None:
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(threads)


class YoloDetector:
    def __init__(self, info: ModelInfo, backend: str = "auto", cpu_threads: int = 0) -> None:
        global LOAD_COUNT
        import torch
        from ultralytics import YOLO

        if cpu_threads > 0:
            # Several pool processes infer side by side: each keeps to its share of the cores
            # (torch's ops, and OpenCV's resizes in ultralytics' pre-processing).
            torch.set_num_threads(cpu_threads)
            _limit_opencv_threads(cpu_threads)
        cuda = torch.cuda.is_available()
        self.name = info.name
        self.imgsz = info.imgsz
        self.info = info
        self.backend = choose_backend(backend, info, cuda)
        self.device = "cuda:0" if cuda and self.backend == "torch" else "cpu"
        path = info.onnx if self.backend == "onnx" else info.weights
        self.model = YOLO(str(path), task="detect")
        self.labels: dict[int, str] = dict(enumerate(info.classes))
        # The first predict builds kernels/sessions (seconds): pay it at start, not on a task.
        blank = Image.new("RGB", (self.imgsz, self.imgsz), "white")
        self.predict([blank], 0.5, 0.5)
        if self.backend == "onnx" and self.device == "cpu":
            self._onnx_session_without_spinning(path, cpu_threads)
            self.predict([blank], 0.5, 0.5)
        LOAD_COUNT += 1
        log.info("loaded model %s (%s on %s)", self.name, self.backend, self.device)

    def _onnx_session_without_spinning(self, path: Any, cpu_threads: int) -> None:
        """Rebuild ultralytics' ONNX Runtime session with spin-waiting off.

        By default ORT's threads spin between operators: on a CPU shared with our download and
        decode threads (and other processes), they burn the cores those need, and a spinning
        thread descheduled mid-operator stalls its peers — 3-4x slower on a busy 2-core machine
        (bench/README.md). ultralytics takes no session options, so its session is replaced.
        """
        import onnxruntime as ort

        backend = getattr(getattr(self.model.predictor, "model", None), "backend", None)
        session = getattr(backend, "session", None)
        if session is None or getattr(backend, "use_io_binding", False):
            log.warning("ONNX session not found where expected: keeping ultralytics' own")
            return
        options = ort.SessionOptions()
        if cpu_threads > 0:
            options.intra_op_num_threads = cpu_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        backend.session = ort.InferenceSession(
            str(path), options, providers=session.get_providers()
        )

    def predict(
        self, images: list[Image.Image], confidence: float, iou: float
    ) -> list[list[dict[str, Any]]]:
        # ultralytics reads numpy arrays as BGR; PIL images are RGB and handled as such.
        if self.backend == "onnx":
            # The exported graph has a fixed batch of 1.
            results = [r for img in images for r in self._predict([img], confidence, iou)]
        else:
            results = self._predict(images, confidence, iou)
        return [self._detections(r) for r in results]

    def _predict(self, images: list[Image.Image], confidence: float, iou: float) -> list[Any]:
        return self.model.predict(
            images,
            imgsz=self.imgsz,
            conf=confidence,
            iou=iou,
            device=self.device,
            verbose=False,
            save=False,
        )

    def _detections(self, result: Any) -> list[dict[str, Any]]:
        boxes = result.boxes
        xyxy = boxes.xyxy.cpu().numpy() if len(boxes) else np.zeros((0, 4))
        return [
            {
                "xyxy": [float(v) for v in xyxy[i]],
                "confidence": float(boxes.conf[i]),
                "label": self.labels.get(int(boxes.cls[i]), str(int(boxes.cls[i]))),
            }
            for i in range(len(boxes))
        ]

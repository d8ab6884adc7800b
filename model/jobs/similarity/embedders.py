"""Global descriptors from feature extractors named by model cards with `task: "embed"` (worker
process only: imports torch / onnxruntime when a model is loaded).

Card `format`:
- `ultralytics-backbone`: the first layers of an ultralytics detector (`weights` is its .pt);
  `layers` names the layers whose feature maps are pooled (the shipped card uses the demo
  detector's backbone, so no download and no second set of weights).
- `onnx`: any ONNX graph taking an N x 3 x imgsz x imgsz float image; runs in ONNX Runtime.
- `torchscript`: the same as a TorchScript archive; runs in torch (on the GPU when there is one).

Every output is pooled the same way: a 4-D feature map by GeM (p=3; generalized mean, which
weighs strong activations more than average pooling), a 2-D output taken as is; each output is
L2-normalised and the concatenation normalised again, so cosine similarity is a dot product.
Images are letterboxed (default) or stretched to imgsz, scaled to [0, 1], then (x - mean) / std.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

from model.inference.registry import ModelInfo

log = logging.getLogger(__name__)
LOAD_COUNT = 0
PAD_GREY = 114  # ultralytics' letterbox colour
GEM_P = 3.0


def preprocess(
    images: list[Image.Image],
    size: int,
    resize: str = "letterbox",
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        image = image.convert("RGB")
        if resize == "stretch":
            square = image.resize((size, size), Image.Resampling.BILINEAR)
        else:
            scale = size / max(image.size)
            w, h = (max(1, round(v * scale)) for v in image.size)
            square = Image.new("RGB", (size, size), (PAD_GREY,) * 3)
            square.paste(
                image.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2)
            )
        arr = np.asarray(square, dtype=np.float32) / 255.0
        batch[i] = ((arr - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(
            2, 0, 1
        )
    return batch


def gem(feature_map: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """N x C x H x W -> N x C: (mean of x^p)^(1/p) over positions (x clipped at a small eps)."""
    x = np.clip(feature_map.astype(np.float32), 1e-6, None)
    return np.power(np.power(x, p).mean(axis=(2, 3)), 1.0 / p)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def pool(outputs: list[np.ndarray]) -> np.ndarray:
    parts = []
    for out in outputs:
        if out.ndim == 4:
            parts.append(_normalise(gem(out)))
        elif out.ndim == 2:
            parts.append(_normalise(out.astype(np.float32)))
        else:
            raise ValueError(f"cannot pool an output of shape {out.shape}")
    return _normalise(np.concatenate(parts, axis=1))


class Embedder:
    """Loaded feature extractor: `embed(images)` -> N x dim unit vectors."""

    backend = "none"
    device = "cpu"

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.name = info.name
        self.imgsz = info.imgsz
        opts = info.options
        self.resize = str(opts.get("resize", "letterbox"))
        self.mean = tuple(float(v) for v in opts.get("mean", (0.0, 0.0, 0.0)))
        self.std = tuple(float(v) for v in opts.get("std", (1.0, 1.0, 1.0)))
        self.dim = 0

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        batch = preprocess(images, self.imgsz, self.resize, self.mean, self.std)
        return pool(self._forward(batch))

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def _warm_up(self) -> None:
        """First call builds kernels/sessions: pay it at load, and learn the dimension."""
        global LOAD_COUNT
        self.dim = int(self.embed([Image.new("RGB", (self.imgsz, self.imgsz), "white")]).shape[1])
        LOAD_COUNT += 1
        log.info(
            "loaded embedder %s (%s on %s, %d dims)", self.name, self.backend, self.device, self.dim
        )


class _TorchEmbedder(Embedder):
    backend = "torch"

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        import torch

        self.torch = torch
        self.device = "cuda:0" if torch.cuda.is_available() else "cpu"

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(batch).to(self.device)
            outputs = self._run(x)
            return [o.float().cpu().numpy() for o in outputs]

    def _run(self, x: Any) -> list[Any]:
        raise NotImplementedError


class UltralyticsBackbone(_TorchEmbedder):
    """Feature maps of chosen layers of an ultralytics detector, by a truncated forward pass."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        from ultralytics import YOLO

        network = YOLO(str(info.weights), task="detect").model
        self.layers = sorted(int(i) for i in info.options.get("layers", [9]))
        self.modules = list(network.model)[: self.layers[-1] + 1]
        # A truncated forward is only valid while every layer reads its predecessor's output
        # (true of YOLOv8's backbone); anything else needs the model's own routing.
        if any(getattr(m, "f", -1) != -1 for m in self.modules):
            raise ValueError(f"{info.name}: layers up to {self.layers[-1]} are not sequential")
        for module in self.modules:
            module.to(self.device).eval()
        self._warm_up()

    def _run(self, x: Any) -> list[Any]:
        outputs = []
        for i, module in enumerate(self.modules):
            x = module(x)
            if i in self.layers:
                outputs.append(x)
        return outputs


class TorchScriptEmbedder(_TorchEmbedder):
    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        self.module = self.torch.jit.load(str(info.weights), map_location=self.device).eval()
        self._warm_up()

    def _run(self, x: Any) -> list[Any]:
        out = self.module(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]


class OnnxEmbedder(Embedder):
    backend = "onnx"

    def __init__(self, info: ModelInfo, cpu_threads: int = 0) -> None:
        super().__init__(info)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if cpu_threads > 0:
            options.intra_op_num_threads = cpu_threads
        # Spinning threads starve the download/decode threads on a small CPU (see detector.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(info.weights), options, providers=providers)
        self.device = "cuda:0" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        # An exported graph often has a fixed batch of 1: feed it one image at a time.
        self.one_at_a_time = isinstance(first.shape[0], int) and first.shape[0] == 1
        self._warm_up()

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        if not self.one_at_a_time:
            return list(self.session.run(None, {self.input_name: batch}))
        runs = [
            self.session.run(None, {self.input_name: batch[i : i + 1]}) for i in range(len(batch))
        ]
        return [np.concatenate(parts, axis=0) for parts in zip(*runs, strict=True)]


def load_embedder(info: ModelInfo, cpu_threads: int = 0) -> Embedder:
    if info.task != "embed":
        raise ValueError(f"{info.name} is a {info.task} model, not a feature extractor")
    if info.format == "ultralytics-backbone":
        return UltralyticsBackbone(info)
    if info.format == "torchscript":
        return TorchScriptEmbedder(info)
    return OnnxEmbedder(info, cpu_threads)


class Embedders:
    """The worker's feature extractors, loaded on first use and kept for the process's life
    (the configured default is loaded at start)."""

    def __init__(self, registry: dict[str, ModelInfo], cpu_threads: int = 0) -> None:
        self.registry = {n: i for n, i in registry.items() if i.task == "embed"}
        self.cpu_threads = cpu_threads
        self.loaded: dict[str, Embedder] = {}

    def get(self, name: str) -> Embedder | None:
        if name not in self.loaded:
            info = self.registry.get(name)
            if info is None:
                return None
            self.loaded[name] = load_embedder(info, self.cpu_threads)
        return self.loaded[name]

"""Checking a YOLO checkpoint before it is published (`python -m model models add`).

Heavy (torch, ultralytics): the CLI imports it, never the HTTP process. The file is copied into
a scratch folder, loaded with ultralytics with every network connection refused, must be a
detection model, runs one dry inference, and is exported to ONNX when that works. Nothing is
written anywhere but the scratch folder; the caller publishes the result (catalog.Catalog).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from model.inference.catalog import ModelStoreError, new_card, sha256_of, validate_name

DEFAULT_IMGSZ = 640


class DownloadRefused(OSError):
    """Loading the checkpoint tried to reach the network."""


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Any socket connection in this process fails while inside (ultralytics downloads what it
    does not find: a bare model name, fonts, an AMP check model)."""

    def refuse(_sock: socket.socket, address: Any) -> None:
        raise DownloadRefused(f"network access refused while importing a model ({address})")

    original, original_ex = socket.socket.connect, socket.socket.connect_ex
    socket.socket.connect = refuse  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = original, original_ex  # type: ignore[method-assign]


def _default_name(path: Path) -> str:
    try:
        return validate_name(path.stem.lower())
    except ModelStoreError as exc:
        raise ModelStoreError(exc.code, f"{exc.message}; give one with --name") from exc


def _check_file(path: Path, max_bytes: int) -> None:
    if not path.is_file():
        raise ModelStoreError(
            "no_such_file",
            f"{path}: no such file (give a local .pt file; a bare model name would make "
            "ultralytics download one, which an import never does)",
        )
    if path.suffix != ".pt":
        raise ModelStoreError("not_a_checkpoint", f"{path}: expected a .pt checkpoint")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelStoreError(
            "model_too_large", f"{path}: {size} bytes; models.max_bytes allows {max_bytes}"
        )
    # torch saves checkpoints as zip archives: a truncated one has lost its central directory.
    if not zipfile.is_zipfile(path):
        raise ModelStoreError(
            "not_a_checkpoint", f"{path}: truncated, or not a PyTorch checkpoint (no zip archive)"
        )


def _imgsz(model: Any) -> int:
    args = (getattr(model, "ckpt", None) or {}).get("train_args") or {}
    size = args.get("imgsz") or model.overrides.get("imgsz") or DEFAULT_IMGSZ
    return int(max(size) if isinstance(size, list | tuple) else size)


def _load(copy: Path) -> Any:
    from ultralytics import YOLO

    try:
        with no_network():
            model = YOLO(str(copy))
    except DownloadRefused as exc:
        raise ModelStoreError("download_refused", str(exc)) from exc
    except Exception as exc:  # whatever unpickling raises, the file is unusable
        raise ModelStoreError(
            "not_a_yolo_checkpoint", f"ultralytics cannot load it: {type(exc).__name__}: {exc}"
        ) from exc
    if model.task != "detect":
        raise ModelStoreError(
            "not_a_detector", f"a {model.task} model; only detection models can be imported"
        )
    return model


def _dry_run(model: Any, imgsz: int) -> float:
    from PIL import Image

    started = time.perf_counter()
    try:
        with no_network():
            results = model.predict(
                Image.new("RGB", (imgsz, imgsz), "white"),
                imgsz=imgsz,
                device="cpu",
                verbose=False,
                save=False,
            )
    except Exception as exc:  # a model that cannot infer is not imported
        raise ModelStoreError("dry_run_failed", f"{type(exc).__name__}: {exc}") from exc
    if len(results) != 1 or getattr(results[0], "boxes", None) is None:
        raise ModelStoreError("dry_run_failed", "inference gave no detection result")
    return (time.perf_counter() - started) * 1000


def _export_onnx(model: Any, imgsz: int) -> tuple[Path | None, str | None]:
    """The ONNX file (2-3x faster on CPU), or why there is none: an import goes on without."""
    try:
        with no_network():
            exported = model.export(
                format="onnx", imgsz=imgsz, simplify=False, dynamic=False, verbose=False
            )
    except Exception as exc:  # noqa: BLE001 - ONNX is optional
        return None, f"{type(exc).__name__}: {exc}"
    return Path(exported), None


def inspect(
    path: Path,
    work: Path,
    max_bytes: int,
    name: str | None = None,
    classes: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The card and blobs (sha256 -> bytes) of a checkpoint, or a ModelStoreError."""
    name = validate_name(name) if name else _default_name(path)
    _check_file(path, max_bytes)
    copy = work / "model.pt"
    shutil.copyfile(path, copy)  # ultralytics writes its exports beside the file it loaded
    model = _load(copy)
    names = [str(model.names[i]) for i in sorted(model.names)]
    if classes:
        if len(classes) != len(names):
            raise ModelStoreError(
                "classes_mismatch",
                f"--classes gives {len(classes)} names; the model has {len(names)}",
            )
        names = list(classes)
    imgsz = _imgsz(model)
    dry_run_ms = _dry_run(model, imgsz)
    onnx_path, onnx_problem = _export_onnx(model, imgsz)
    weights = copy.read_bytes()
    blobs = {sha256_of(weights): weights}
    card = new_card(
        name,
        classes=names,
        imgsz=imgsz,
        sha256=sha256_of(weights),
        size=len(weights),
        source=path.name,
        dry_run_ms=round(dry_run_ms, 1),
        onnx_sha256=None,
        versions={p: metadata.version(p) for p in ("ultralytics", "torch")},
    )
    if onnx_path is not None:
        onnx = onnx_path.read_bytes()
        if len(onnx) <= max_bytes:
            blobs[sha256_of(onnx)] = onnx
            card.update(onnx_sha256=sha256_of(onnx), onnx_size=len(onnx))
        else:
            onnx_problem = f"ONNX export of {len(onnx)} bytes is over models.max_bytes"
    if onnx_problem:
        card["onnx_problem"] = onnx_problem
    return card, blobs

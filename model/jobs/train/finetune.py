"""Fine-tune a YOLO detector on a small annotated set, offline, and measure it against its base.

Torch-free at import: torch and ultralytics are imported inside the functions (the HTTP process
imports the train job's module, and tests import this one cheaply).

The base and the new model are measured on the same held-out pages with ultralytics' own
`val()` (COCO-style mAP50 and mAP50-95). The new model is the *last* epoch's weights (EMA), not
ultralytics' `best.pt`: best-epoch selection on the held-out split would make its score
optimistic. Training never downloads anything: settings live in `workdir`, fonts are local
(model/inference/offline.py), plots are off, and the AMP check (which loads a downloaded model)
is replaced by a plain "AMP on" on CUDA.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Hyper-parameters for a few dozen pages: no gradient accumulation (nbs = batch, else tiny sets
# get ~1 optimizer step per epoch), no warmup (its high bias lr wrecks a trained head).
_SMALL_DATA_ARGS: dict[str, Any] = {
    "warmup_epochs": 0,
    "patience": 0,
    "plots": False,
    "val": True,
    "workers": 0,
    "exist_ok": True,
    "verbose": False,
    "deterministic": True,
}

EpochHook = Callable[[int, int, float | None], None]  # (epochs done, total, current val mAP50)
StopCheck = Callable[[], None]  # raises to stop training (cancel, lost attempt)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 30
    imgsz: int = 416
    batch: int = 8
    seed: int = 0
    device: str = ""  # "" picks cuda:0 when there is a GPU, else cpu
    threads: int = 0  # CPU threads for torch (0: leave as is)
    lr0: float = 0.002
    close_mosaic: int = 5  # last epochs without mosaic: pages are seen whole before the end


@dataclass(frozen=True)
class Scores:
    map50: float
    map50_95: float


@dataclass
class FinetuneResult:
    weights: Path  # the new model's .pt (inside workdir)
    base: Scores
    new: Scores
    epochs_run: int
    train_seconds: float
    device: str
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = str(self.weights)
        return out


def pick_device(requested: str = "") -> str:
    import torch

    if requested:
        return requested
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def versions() -> dict[str, str]:
    import numpy
    import torch
    import ultralytics

    return {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def prepare(workdir: Path, threads: int = 0) -> None:
    """Offline settings under workdir; call before ultralytics is first imported if possible."""
    from model.inference.offline import configure_offline

    if threads > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # ultralytics forces 1 otherwise
    configure_offline(workdir / "yolo_config")
    from ultralytics import settings

    settings.update(
        {
            "runs_dir": str(workdir / "runs"),
            "weights_dir": str(workdir / "weights"),
            "datasets_dir": str(workdir),
        }
    )
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def score(weights: Path, data_yaml: Path, imgsz: int, device: str, workdir: Path) -> Scores:
    """mAP50 and mAP50-95 of a model on the yaml's `val` images."""
    from ultralytics import YOLO

    metrics = YOLO(str(weights), task="detect").val(
        data=str(data_yaml),
        split="val",
        imgsz=imgsz,
        batch=8,
        device=device,
        workers=0,
        plots=False,
        save_json=False,
        verbose=False,
        project=str(workdir / "runs"),
        name="val",
        exist_ok=True,
    )
    return Scores(round(float(metrics.box.map50), 4), round(float(metrics.box.map), 4))


def _no_amp_download(model: Any) -> bool:
    """Stands in for ultralytics' check_amp, which loads (downloads) another model to compare."""
    return next(model.parameters()).device.type == "cuda"


def train(
    base_weights: Path,
    data_yaml: Path,
    workdir: Path,
    config: FinetuneConfig,
    on_epoch: EpochHook | None = None,
    check_stop: StopCheck | None = None,
) -> tuple[Path, int, float]:
    """Fine-tune; returns (last weights, epochs run, seconds). check_stop runs after each batch
    and may raise: the exception leaves this function and nothing is kept but workdir."""
    import ultralytics.engine.trainer as trainer_module
    from ultralytics import YOLO

    trainer_module.check_amp = _no_amp_download
    device = pick_device(config.device)
    model = YOLO(str(base_weights), task="detect")
    done = {"epochs": 0}

    def skip_final_eval(trainer: Any) -> None:
        trainer.final_eval = lambda: None  # a second val of best.pt: time spent for nothing

    def batch_end(_trainer: Any) -> None:
        if check_stop is not None:
            check_stop()

    def epoch_end(trainer: Any) -> None:
        done["epochs"] = trainer.epoch + 1
        if on_epoch is not None:
            value = (trainer.metrics or {}).get("metrics/mAP50(B)")
            on_epoch(done["epochs"], config.epochs, None if value is None else float(value))

    model.add_callback("on_pretrain_routine_end", skip_final_eval)
    model.add_callback("on_train_batch_end", batch_end)
    model.add_callback("on_fit_epoch_end", epoch_end)
    t0 = time.perf_counter()
    model.train(
        data=str(data_yaml),
        epochs=config.epochs,
        imgsz=config.imgsz,
        batch=config.batch,
        nbs=config.batch,
        seed=config.seed,
        device=device,
        amp=device.startswith("cuda"),
        lr0=config.lr0,
        optimizer="AdamW",
        close_mosaic=min(config.close_mosaic, max(0, config.epochs - 1)),
        project=str(workdir / "runs"),
        name="train",
        **_SMALL_DATA_ARGS,
    )
    seconds = time.perf_counter() - t0
    last = Path(model.trainer.last)
    if not last.is_file():
        raise RuntimeError("training ended without writing its weights")
    return last, done["epochs"], seconds


def finetune(
    base_weights: Path,
    data_yaml: Path,
    heldout_yaml: Path,
    workdir: Path,
    config: FinetuneConfig,
    on_epoch: EpochHook | None = None,
    check_stop: StopCheck | None = None,
) -> FinetuneResult:
    """Score the base on the held-out pages, fine-tune on data_yaml, score the new model there."""
    prepare(workdir, config.threads)
    device = pick_device(config.device)
    base = score(base_weights, heldout_yaml, config.imgsz, device, workdir)
    if check_stop is not None:
        check_stop()
    weights, epochs_run, seconds = train(
        base_weights, data_yaml, workdir, config, on_epoch, check_stop
    )
    new = score(weights, heldout_yaml, config.imgsz, device, workdir)
    return FinetuneResult(weights, base, new, epochs_run, round(seconds, 1), device, versions())

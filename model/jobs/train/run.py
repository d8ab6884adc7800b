"""The train job's work (worker only): fetch and check the dataset, split it, fine-tune, score
base and new model on the same held-out pages, publish whole or not at all.

Progress: one result item per epoch (`done` of `total` counts epochs) with that epoch's
held-out mAP50, and the task's summary says the stage and the latest mAP50. Cancel is checked
after every batch (model/jobs/train/finetune.py), so it stops within one batch; a timeout
(Celery's soft limit) stops it the same way. Nothing is published until the last check has
passed, and publishing itself is all-or-nothing (model/jobs/train/publish.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from model.inference.catalog import ModelStoreError, sha256_file
from model.inference.registry import ModelInfo
from model.jobs import JobFailed, UploadMissing
from model.jobs.context import JobContext
from model.jobs.contract import DatasetUpload, DatasetUrl
from model.jobs.train import TrainParams, epoch_item
from model.jobs.train.dataset import Dataset, read_yolo_zip, write_split
from model.jobs.train.finetune import FinetuneConfig, FinetuneResult, finetune
from model.jobs.train.iiif import read_iiif
from model.jobs.train.publish import ModelStore
from model.sources.fetch import FetchError


def _base_model(store: ModelStore, settings: Any, name: str | None, key: str) -> ModelInfo:
    wanted = name or settings.models.default
    try:
        info = store.base(wanted, key)
    except ModelStoreError as exc:
        raise JobFailed(exc.code, exc.message) from exc
    if info is None or info.task != "detect":
        raise JobFailed("unknown_model", f"no detect model named {wanted!r}")
    return info


def _dataset(ctx: JobContext, params: TrainParams, base: ModelInfo) -> Dataset:
    """The task's ground truth, as evaluate takes it (a manifest and its annotations, or a YOLO
    zip upload), or a YOLO zip by URL."""
    settings = ctx.resources.settings
    cap = settings.training.max_dataset_bytes
    by_url = ctx.spec.of_kind(DatasetUrl)
    uploaded = ctx.spec.of_kind(DatasetUpload)
    if not by_url and not uploaded:
        return read_iiif(ctx, params.imgsz, params.default_class, list(base.classes))
    try:
        if by_url:
            data = ctx.resources.fetcher.get(by_url[0].url, max_bytes=cap).content
        else:
            data = ctx.resources.uploads.read(uploaded[0])
    except FetchError as exc:
        raise JobFailed("dataset_unreachable", f"dataset_url: {exc}") from exc
    except UploadMissing as exc:
        raise JobFailed(exc.code, exc.message) from exc
    return read_yolo_zip(data, settings.training.max_pages, cap)


def _threads(settings: Any) -> int:
    return settings.training.cpu_threads or len(os.sched_getaffinity(0))


def run_train(ctx: JobContext) -> None:
    settings = ctx.resources.settings
    params = TrainParams.model_validate(ctx.spec.params)
    if params.epochs > settings.training.max_epochs:
        raise JobFailed("too_many_epochs", f"at most {settings.training.max_epochs} epochs")
    store = ModelStore(settings, ctx.resources.uploads.redis)
    key = ctx.record.owner
    base = _base_model(store, settings, params.base_model, key)
    if store.exists(params.name):
        raise JobFailed("model_exists", f"a model named {params.name!r} exists already")
    # The API resolved it for the key (model/api/publishing.py); a task queued without it: the
    # key's own.
    owner = None if params.visibility == "everyone" else key
    try:
        store.check_quota(owner)  # before minutes of training; publishing checks again
    except ModelStoreError as exc:
        raise JobFailed(exc.code, exc.message) from exc
    ctx.set_total(params.epochs)
    ctx.set_summary({"stage": "loading dataset"})
    dataset = _dataset(ctx, params, base)
    ctx.check_cancel()

    scratch = settings.data_path / "training"
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{ctx.task_id}-", dir=scratch))
    try:
        split = write_split(dataset, work / "data", params.val_fraction, params.seed, 0)
        ctx.set_summary({"stage": "scoring the base model"})

        def on_epoch(done: int, total: int, map50: float | None) -> None:
            ctx.emit(epoch_item(done, map50))
            ctx.set_summary({"stage": "training", "epoch": done, "of": total, "val_map50": map50})

        config = FinetuneConfig(
            epochs=params.epochs, imgsz=params.imgsz, seed=params.seed, threads=_threads(settings)
        )
        result = finetune(
            base.weights, split.data_yaml, split.val_yaml, work, config, on_epoch, ctx.check_cancel
        )
        ctx.check_cancel()  # the last point to stop: past it the model is published whole
        summary = _summary(params, base, dataset, split, result)
        summary["provenance"]["worker"] = settings.worker_name  # which host trained it
        if summary["published"]:
            extra = _card(params, base, dataset, result, summary["provenance"], key)
            try:
                store.publish(params.name, result.weights, work / "publish", owner, extra)
            except ModelStoreError as exc:
                raise JobFailed(exc.code, exc.message) from exc
        # The status shows it as result.provenance (a summary key of that name would clash).
        ctx.set_provenance(summary.pop("provenance"))
        ctx.set_summary(summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(
    params: TrainParams, base: ModelInfo, dataset: Dataset, split: Any, result: FinetuneResult
) -> dict[str, Any]:
    better = result.new.map50 > result.base.map50
    return {
        "stage": "done",
        "base": {
            "model": base.name,
            "mAP50": result.base.map50,
            "mAP50_95": result.base.map50_95,
        },
        "new": {
            "model": params.name,
            "mAP50": result.new.map50,
            "mAP50_95": result.new.map50_95,
            "sha256": sha256_file(result.weights),
        },
        "better": better,
        "published": params.publish == "always" or better,
        "publish": params.publish,
        "visibility": "everyone" if params.visibility == "everyone" else "key",
        "held_out_pages": [dataset.source_of(name) for name in split.val_pages],
        "train_pages": len(split.train_pages),
        "skipped_pages": dataset.skipped,
        "annotation_problems": dataset.problems,
        "train_seconds": result.train_seconds,
        "device": result.device,
        "provenance": {
            "dataset_sha256": dataset.digest(),
            "base_model": base.name,
            "base_sha256": base.sha256,
            "epochs_run": result.epochs_run,
            "epochs": params.epochs,
            "imgsz": params.imgsz,
            "seed": params.seed,
            "val_fraction": params.val_fraction,
            "versions": result.versions,
        },
    }


def _card(
    params: TrainParams,
    base: ModelInfo,
    dataset: Dataset,
    result: FinetuneResult,
    provenance: dict[str, Any],
    owner: str,
) -> dict[str, Any]:
    """Card fields beside the store's own (classes, imgsz, sha256 come from the checkpoint)."""
    return {
        "published_by": owner,
        "trained_on": f"{len(dataset.pages)} annotated pages (train job), from {base.name}",
        "metrics": {
            "mAP50": result.new.map50,
            "mAP50_95": result.new.map50_95,
            "held_out_pages": round(len(dataset.pages) * params.val_fraction),
        },
        "training": provenance,
    }

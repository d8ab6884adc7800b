"""The Celery worker: `celery -A model.worker worker`. Only this process imports torch.

- The worker runs `worker.concurrency` tasks at once, one per prefork pool process (README,
  "Tasks run side by side"). Each pool process loads every registered model once, at start
  (`worker_process_init`), with its share of the CPU threads (`Settings.inference_threads`),
  and publishes a heartbeat that `/readyz` reads.
- The main process runs a small reaper thread that enforces a cancel the job did not honour
  within the grace period (kill the child; the model reloads in its replacement), and records a
  task that the hard time limit killed as TIMED_OUT (Celery reports that in the main process).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from importlib import metadata
from typing import Any

from celery.signals import (
    task_failure,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from redis import Redis

from model.celery_app import PING, RUN_JOB, make_celery
from model.ending import end_after_failure, end_task
from model.housekeeping import housekeeping
from model.inference.provenance import model_provenance
from model.inference.registry import discover
from model.jobs.contract import WorkerResources
from model.runner import run_task
from model.settings import get_settings
from model.sources.fetch import SafeFetcher
from model.store import WORKERS_PREFIX, State, TaskStore

log = logging.getLogger("scriptorium.worker")
settings = get_settings()
celery = make_celery(settings)

HEARTBEAT_S = 5
HEARTBEAT_TTL_S = 20
REAPER_PERIOD_S = 0.5

_resources: WorkerResources | None = None  # this pool process's, once its models are loaded


def _redis() -> Redis:
    return Redis.from_url(settings.redis_url(), decode_responses=True)


def _store(redis: Redis) -> TaskStore:
    return TaskStore(redis, settings.results.ttl_s, settings.results.tombstone_ttl_s)


def _heartbeat_key() -> str:
    return f"{WORKERS_PREFIX}{socket.gethostname()}:{os.getpid()}"


def _versions() -> dict[str, str]:
    names = ("ultralytics", "torch", "onnxruntime", "celery", "pillow", "numpy", "requests")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@worker_process_init.connect
def load_models(**_: Any) -> None:
    from model.inference import detector as detector_module
    from model.inference.offline import configure_offline

    configure_offline(settings.data_path / "ultralytics")
    from model.similarity import embedders as embedder_module

    registry = discover(settings.model_dirs)
    # This process's share of the cores: `worker.concurrency` processes infer side by side.
    threads = settings.inference_threads()
    detectors = {
        name: detector_module.YoloDetector(info, settings.inference.backend, threads)
        for name, info in registry.items()
        if info.task == "detect"
    }
    # Feature extractors (similarity job): the configured one now, others on first use.
    embedders = embedder_module.Embedders(registry, threads)
    try:
        embedders.get(settings.similarity.embed_model)
    except Exception:  # a broken plug-in must not stop detection: its tasks fail instead
        log.exception("feature extractor %s did not load", settings.similarity.embed_model)
    redis = _redis()
    versions = _versions()

    def provenance(det: Any) -> dict[str, Any]:
        found = model_provenance(det)
        return {
            **found,
            "model_sha256": found["sha256"],  # the name results had before; same value
            "worker_pid": os.getpid(),
            "model_loads_in_process": detector_module.LOAD_COUNT,
            "versions": versions,
        }

    global _resources
    _resources = WorkerResources(
        settings=settings,
        redis=redis,
        store=_store(redis),
        fetcher=SafeFetcher.from_settings(settings.fetch),
        detectors=detectors,
        embedders=embedders,
        default_model=settings.models.default,
        versions=versions,
        provenance=provenance,
    )
    beat = {
        "pid": os.getpid(),
        "models": sorted(detectors),
        "embedders": sorted(embedders.loaded),
        "backends": {n: d.backend for n, d in detectors.items()},
        "model_loads": detector_module.LOAD_COUNT,
        "inference_threads": threads,
        "started_at": time.time(),
    }
    threading.Thread(target=_heartbeat, args=(redis, beat), daemon=True).start()


def _heartbeat(redis: Redis, beat: dict[str, Any]) -> None:
    while True:
        try:
            redis.set(_heartbeat_key(), json.dumps(beat), ex=HEARTBEAT_TTL_S)
        except Exception:
            log.warning("heartbeat failed", exc_info=True)
        time.sleep(HEARTBEAT_S)


@worker_process_shutdown.connect
def clear_heartbeat(**_: Any) -> None:
    if _resources is not None:
        _resources.redis.delete(_heartbeat_key())


@celery.task(name=RUN_JOB, ignore_result=True)
def run_job(task_id: str) -> None:
    assert _resources is not None, "worker_process_init loads the resources first"
    run_task(task_id, _resources.store, _resources, settings.uploads_dir)


@celery.task(name=PING)
def ping() -> dict[str, Any]:
    """A no-op round trip (benchmarks compare the API's overhead against it)."""
    return {"pid": os.getpid()}


@worker_ready.connect
def start_reaper(**_: Any) -> None:
    threading.Thread(target=_reap_forever, daemon=True, name="reaper").start()


def _reap_forever() -> None:
    store = _store(_redis())
    next_housekeeping = 0.0
    while True:
        try:
            now = time.time()
            reap_once(store, now)
            if now >= next_housekeeping:
                housekeeping(store, settings.uploads_dir)
                next_housekeeping = now + settings.results.purge_interval_s
        except Exception:  # keep reaping whatever one pass hit
            log.exception("reaper pass failed")
        time.sleep(REAPER_PERIOD_S)


def reap_once(store: TaskStore, now: float) -> None:
    """Enforce cancels that a job did not honour within the grace period."""
    for task_id in store.running_ids():
        record = store.get(task_id)
        if record is None or record.state.terminal:
            store.forget_running(task_id)
            continue
        cancel_at = record.cancel_requested_at
        if cancel_at and now - cancel_at > settings.cancel.grace_s:
            log.warning("task %s ignored its cancel flag: killing its process", task_id)
            celery.control.revoke(task_id, terminate=True, signal="SIGKILL")
            end_task(store, settings.uploads_dir, task_id, State.CANCELLED)


@task_failure.connect
def end_failed_task(task_id: str | None = None, exception: Any = None, **_: Any) -> None:
    """Whatever escaped a job ends its task: the hard time limit (reported here, in the main
    process), a soft limit that fired before the runner's own handlers, any other error."""
    if not task_id:
        return
    redis = _redis()
    try:
        end_after_failure(_store(redis), settings.uploads_dir, task_id, exception)
    finally:
        redis.close()

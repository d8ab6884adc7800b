"""The Celery worker: `celery -A model.worker worker`. Only this process imports torch.

- The worker runs `worker.concurrency` tasks at once, one per prefork pool process (README,
  "Tasks run side by side"). Each pool process loads every registered model once, at start
  (`worker_process_init`), with its share of the CPU threads (`Settings.inference_threads`),
  and publishes a heartbeat (model/tasks/fleet.py) that `/readyz`, `GET /models` and ETAs read.
- The worker takes the default queue and the queue of every model it has (model/celery_app.py),
  so a task naming a model runs on a host that has it.
- The same heartbeat thread renews the leases of the tasks the process runs
  (model/lifecycle/attempts.py) and keeps the imported models in step with Redis
  (model/inference/live.py): added ones are loaded, removed ones dropped, without a restart.
  They go to the default queue.
- The main process runs a small reaper thread that enforces a cancel the job did not honour
  within the grace period (kill the child; the model reloads in its replacement), requeues the
  tasks of dead workers, on any host (model/lifecycle/attempts.py), and records a task that the hard
  time limit killed as TIMED_OUT (Celery reports that in the main process).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from importlib import metadata
from typing import Any

from celery.exceptions import Reject
from celery.signals import (
    celeryd_after_setup,
    task_failure,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from redis import Redis

from model.celery_app import PING, RUN_JOB, worker_queues
from model.inference.catalog import BlobCache, Catalog
from model.inference.live import LiveDetectors
from model.inference.provenance import model_provenance
from model.inference.registry import discover
from model.jobs.contract import WorkerResources
from model.jobs.train import TRAIN_QUEUE
from model.lifecycle.attempts import (
    lease_ms,
    own_prefix,
    release_deferred,
    requeue_lost,
    resend_unsent,
)
from model.lifecycle.ending import end_after_failure, end_task, timeout_error
from model.lifecycle.housekeeping import housekeeping
from model.lifecycle.runner import ATTEMPTS, run_task
from model.pipeline.memory import size_process_budget
from model.redis_client import unreachable
from model.services import build_services
from model.settings import get_settings
from model.sources.metered import MeteredFetcher
from model.tasks import fleet
from model.tasks.states import State
from model.tasks.store import TaskStore
from model.uploads import UploadStore

log = logging.getLogger("scriptorium.worker")
# Built before the pool forks; each child's clients connect anew (redis-py resets its pools in
# a forked process). Ended tasks' webhooks are queued with this Celery (model/lifecycle/ending.py).
services = build_services(get_settings(), "worker")
settings, celery = services.settings, services.celery

HEARTBEAT_S = 5
REAPER_PERIOD_S = 0.5

_resources: WorkerResources | None = None  # this pool process's, once its models are loaded


def _heartbeat_key() -> str:
    return fleet.heartbeat_key(settings.worker_name, os.getpid())


def _queues() -> list[str]:
    return worker_queues(settings, discover(settings.model_dirs))


@celeryd_after_setup.connect
def take_model_queues(instance: Any = None, **_: Any) -> None:
    """Besides the default queue (-Q), the queue of every model found here (main process).
    The train-worker program (model.train_worker) takes the training queue only."""
    if instance.app.conf.task_default_queue == TRAIN_QUEUE:
        log.info("taking the training queue only")
        return
    queues = _queues()
    for queue in queues:
        instance.app.amqp.queues.select_add(queue)
    log.info("taking queues %s", ", ".join(queues))


def _versions() -> dict[str, str]:
    names = ("ultralytics", "torch", "onnxruntime", "celery", "pillow", "numpy", "requests")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class _TrainingOnly(LiveDetectors):
    """A train-worker child's detectors: none, and imported models are not loaded either (the
    train job reads a base model's weights from the blob cache itself)."""

    def sync(self, force: bool = False) -> bool:
        return False


@worker_process_init.connect
def load_models(**_: Any) -> None:
    from model.inference import detector as detector_module
    from model.inference.offline import configure_offline

    configure_offline(settings.data_path / "ultralytics")
    from model.jobs.similarity import embedders as embedder_module

    size_process_budget(settings.pipeline.decode_budget_bytes)  # every job's decodes share it
    registry = discover(settings.model_dirs)
    # This process's share of the cores: `worker.concurrency` processes infer side by side.
    threads = settings.inference_threads()
    # A train-worker child trains from the weights on disk: it loads no detector.
    training_only = celery.conf.task_default_queue == TRAIN_QUEUE
    shipped = {
        name: detector_module.YoloDetector(info, settings.inference.backend, threads)
        for name, info in registry.items()
        if info.task == "detect" and not training_only
    }
    redis, uploads = services.redis, services.uploads
    # Imported models: loaded now, then kept in step by the heartbeat thread (no restart).
    detectors = (_TrainingOnly if training_only else LiveDetectors)(
        shipped,
        Catalog(uploads.redis, settings.models.max_bytes),  # blobs need a binary-safe client
        BlobCache(settings.model_cache_dir),
        lambda info: detector_module.YoloDetector(info, settings.inference.backend, threads),
    )
    try:
        detectors.sync()
    except Exception:  # Redis away at start: the heartbeat thread syncs once it is back
        log.warning("imported models not synced at start", exc_info=True)
    # Feature extractors (similarity job): the configured one now, others on first use.
    embedders = embedder_module.Embedders(registry, threads)
    try:
        if not training_only:
            embedders.get(settings.similarity.embed_model)
    except Exception:  # a broken plug-in must not stop detection: its tasks fail instead
        log.exception("feature extractor %s did not load", settings.similarity.embed_model)
    versions = _versions()
    meter = services.meter
    for name, det in detectors.items():
        meter.model_loaded(name, det.backend)

    def provenance(det: Any) -> dict[str, Any]:
        found = model_provenance(det)
        return {
            **found,
            "model_sha256": found["sha256"],  # the name results had before; same value
            "worker": settings.worker_name,
            "worker_pid": os.getpid(),
            "model_loads_in_process": detector_module.LOAD_COUNT,
            "versions": versions,
        }

    # The per-host limit holds for the whole service, not for each pool process.
    fetcher = MeteredFetcher.with_meter(settings.fetch, meter)  # bytes, errors by host
    fetcher.share_host_slots(redis)
    global _resources
    _resources = WorkerResources(
        settings=settings,
        redis=redis,
        store=services.store,
        fetcher=fetcher,
        uploads=uploads,
        detectors=detectors,
        embedders=embedders,
        default_model=settings.models.default,
        versions=versions,
        provenance=provenance,
    )
    beat = {
        "name": settings.worker_name,
        "host": socket.gethostname(),
        "installation": settings.installation_id(),
        "pid": os.getpid(),
        # Which supervisor program: a host runs a worker and a train-worker under one name.
        "role": "train-worker" if training_only else "worker",
        "slots": 1,  # tasks this process runs at once
        "queues": [TRAIN_QUEUE] if training_only else _queues(),
        "embedders": sorted(embedders.loaded),
        "inference_threads": threads,
        "started_at": time.time(),
    }
    # Feature extractors load on first use: any on disk here can be served.
    embed = [i.describe(settings.models.default) for i in registry.values() if i.task == "embed"]
    _describe_models(beat, detectors, embed)
    threading.Thread(target=_heartbeat, args=(redis, beat, embed), daemon=True).start()


def _describe_models(
    beat: dict[str, Any], detectors: LiveDetectors, embed: list[dict[str, Any]]
) -> None:
    """The heartbeat's account of the models this process serves (again after each sync)."""
    from model.inference import detector as detector_module

    default = settings.models.default
    described = [
        {**d.info.describe(default), **({"imported": True} if n in detectors.imported else {})}
        for n, d in detectors.items()
    ]
    beat.update(
        models=sorted(detectors),
        model_info=sorted([*described, *embed], key=lambda m: m["name"]),
        model_problems=dict(detectors.problems),
        backends={n: d.backend for n, d in detectors.items()},
        devices={n: d.device for n, d in detectors.items()},
        device=next((d.device for d in detectors.values() if d.device != "cpu"), "cpu"),
        model_loads=detector_module.LOAD_COUNT,
    )


def _heartbeat(redis: Redis, beat: dict[str, Any], embed: list[dict[str, Any]]) -> None:
    """The process's heartbeat and the leases of its tasks, a few times per lease; imported
    models added or removed since the last beat are loaded or dropped first."""
    assert _resources is not None
    period = min(HEARTBEAT_S, settings.worker.lost_grace_s / 3, settings.models.sync_interval_s)
    detectors = _resources.detectors
    while True:
        try:
            ATTEMPTS.renew(_resources.store, lease_ms(settings))
            if detectors.sync() or set(detectors) != set(beat["models"]):
                _describe_models(beat, detectors, embed)
            beat["running"] = ATTEMPTS.running()
            fleet.publish(redis, _heartbeat_key(), beat, fleet.HEARTBEAT_TTL_S)
        except Exception:
            log.warning("heartbeat failed", exc_info=True)
        time.sleep(period)


@worker_process_shutdown.connect
def clear_heartbeat(**_: Any) -> None:
    # Not the patient client: a stop must not wait out an outage (the heartbeat expires anyway).
    if _resources is not None:
        quick = Redis.from_url(settings.redis_url(), socket_timeout=2, socket_connect_timeout=2)
        fleet.withdraw(quick, _heartbeat_key())


@celery.task(name=RUN_JOB, ignore_result=True)
def run_job(task_id: str) -> None:
    assert _resources is not None, "worker_process_init loads the resources first"
    try:
        if run_task(task_id, _resources.store, _resources) is not None:
            release_deferred(_resources.store, celery, settings)  # this slot is free now
    except Exception as exc:
        if unreachable(exc):
            # Redis away before the task could start (or end): acknowledging the message would
            # leave a QUEUED task with none. Put it back; while Redis is away the broker keeps
            # it unacknowledged and restores it on reconnecting. A started task is requeued.
            raise Reject(exc, requeue=True) from exc
        raise


@celery.task(name=PING)
def ping() -> dict[str, Any]:
    """A no-op round trip (benchmarks compare the API's overhead against it)."""
    return {"pid": os.getpid()}


@worker_ready.connect
def start_reaper(**_: Any) -> None:
    threading.Thread(target=_reap_forever, daemon=True, name="reaper").start()


def _reap_forever() -> None:
    store, uploads = services.store, services.uploads
    next_housekeeping = 0.0
    while True:
        try:
            now = time.time()
            reap_once(store, uploads, now)
            requeue_lost(store, celery, settings, _timed_out(store, uploads), now)
            resend_unsent(store, celery, settings, now)
            if now >= next_housekeeping:
                housekeeping(store, uploads)
                next_housekeeping = now + settings.results.purge_interval_s
        except Exception:  # keep reaping whatever one pass hit
            log.exception("reaper pass failed")
        time.sleep(REAPER_PERIOD_S)


def reap_once(store: TaskStore, uploads: UploadStore, now: float) -> None:
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
            end_task(store, uploads, task_id, State.CANCELLED)


def _timed_out(store: TaskStore, uploads: UploadStore) -> Any:
    def end(record: Any) -> None:
        error = timeout_error(record.timeout_s)
        end_task(store, uploads, record.id, State.TIMED_OUT, error, holder=record.holder)

    return end


@task_failure.connect
def end_failed_task(task_id: str | None = None, exception: Any = None, **_: Any) -> None:
    """Whatever escaped a job ends its task: the hard time limit (reported here, in the main
    process), a soft limit that fired before the runner's own handlers, any other error."""
    if not task_id:
        return
    # Only a task one of our own attempts holds: not one requeued away from us meanwhile.
    # Hard time limits are reported in the main process, other failures in the pool's.
    worker = own_prefix(settings.worker_name, pool_process=_resources is not None)
    end_after_failure(services.store, services.uploads, task_id, exception, worker)

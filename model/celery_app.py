"""The Celery app, built from the same settings as the Flask app (torch-free: both sides import it).

The HTTP side only *sends* tasks by name; the task code lives in `model.worker`, which only the
worker process imports.

Routing: a task that names a model (a job's model fields, e.g. detect's `model`) goes to that
model's queue, `scriptorium.model.<name>`, which only workers that have the model take; a task
naming only default models (which every worker has) goes to the default queue, which every
worker takes too.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from model.jobs.registry import longest_hard_limit_s
from model.keyspace import DEFAULT_QUEUE
from model.settings import Settings
from model.tasks.fairness import LANES

RUN_JOB = "scriptorium.run_job"
PING = "scriptorium.ping"
QUEUE = DEFAULT_QUEUE
MODEL_QUEUE_PREFIX = f"{QUEUE}.model."
# Webhook deliveries: a queue of their own, consumed by the `webhooks` worker program only, so a
# slow receiver never holds up inference (model/webhooks/).
DELIVER_WEBHOOK = "scriptorium.deliver_webhook"
WEBHOOK_QUEUE = "scriptorium.webhooks"


def _default_models(settings: Settings) -> set[str]:
    return {settings.models.default, settings.similarity.embed_model}


def queue_for(
    settings: Settings, models: Iterable[str | None], everywhere: Iterable[str] = ()
) -> str:
    """The queue of a task naming these models: the first that is not a default model picks its
    own queue (a task naming two such models goes to the first one's: give the hosts that have
    it the other too); none: the default queue. Models `everywhere` (imported ones, which every
    worker loads: model/inference/catalog.py) count as default models."""
    defaults = _default_models(settings) | set(everywhere)
    for name in models:
        if name and name not in defaults:
            return MODEL_QUEUE_PREFIX + name
    return QUEUE


def worker_queues(settings: Settings, models: Iterable[str]) -> list[str]:
    """What a worker having these models takes: the default queue and their own."""
    return sorted({QUEUE, *(queue_for(settings, [name]) for name in models)})


def send_run(
    celery: Celery, settings: Settings, task_id: str, timeout_s: float, queue: str, lane: int = 0
) -> None:
    """The message that runs a task (sent again when its worker died: in lane 0, see
    model.tasks.fairness)."""
    celery.send_task(
        RUN_JOB,
        args=[task_id],
        task_id=task_id,
        queue=queue,
        priority=lane,
        soft_time_limit=timeout_s,
        time_limit=settings.hard_limit_s(timeout_s),
        # The task record is the result (the run task stores none): without this, Celery
        # subscribes to the task's result channel on send and unsubscribes later, two more
        # Redis round trips in every submit.
        ignore_result=True,
    )


def make_celery(settings: Settings) -> Celery:
    url = settings.redis_url()
    app = Celery("scriptorium", broker=url, backend=url)
    visibility = int(longest_hard_limit_s(settings)) + settings.worker.visibility_margin_s
    redelivery = {
        "visibility_timeout": visibility,
        # Look for overdue unacknowledged tasks every 10 s (kombu's default sweeps only every
        # 10th period: up to 100 s more before a dead worker's task is redelivered).
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        # One list per lane (model.tasks.fairness), taken lane 0 first.
        "priority_steps": list(range(LANES)),
    }
    app.conf.update(
        task_default_queue=QUEUE,
        task_routes={DELIVER_WEBHOOK: {"queue": WEBHOOK_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        # A task is acknowledged only once it has finished, and a worker that dies mid-task
        # gives it back: no task is lost to a crash.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis re-delivers an unacknowledged task after this long: it must outlast the longest
        # allowed task, or a slow task would run twice.
        broker_transport_options=redelivery,
        result_backend_transport_options=redelivery,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        # A pool process loads every model before it reports for work; Celery's default 4 s
        # makes it kill (and respawn, forever) a child that loads slowly on a busy machine.
        worker_proc_alive_timeout=300,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app

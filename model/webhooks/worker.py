"""The webhooks worker program: `celery -A model.webhooks.worker worker -Q scriptorium.webhooks`
(config/supervisor/webhooks.conf; prefork, a few processes). It imports no model, no torch, no
PIL: it only signs and POSTs.

- Each pool process delivers the attempts queued on `scriptorium.webhooks` (model/webhooks/
  delivery.py); a receiver that is slow or down holds one of these processes for at most
  `webhooks.timeout_s`, never the inference worker.
- The main process runs a scheduler thread: retries whose backoff has run out, and messages whose
  queueing or attempt was lost, are queued again (model/webhooks/events.py, the outbox).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_process_init, worker_ready

from model.celery_app import DELIVER_WEBHOOK
from model.services import build_services
from model.settings import get_settings
from model.webhooks.delivery import Deliverer, webhook_fetcher
from model.webhooks.events import Outbox, send

log = logging.getLogger("scriptorium.webhooks")
# webhooks.concurrency processes (-c on the command line wins); deliveries are queued again with
# this Celery (model/webhooks/events.py reads the process's services).
services = build_services(get_settings(), "webhooks")
settings, celery = services.settings, services.celery

SCHEDULER_PERIOD_S = 0.25

_deliverer: Deliverer | None = None


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    global _deliverer
    assert services.keys is not None  # built for the webhooks role: the signing secrets
    _deliverer = Deliverer(
        outbox=Outbox(services.redis, settings),
        store=services.store,
        keys=services.keys,
        fetcher=webhook_fetcher(settings),
        settings=settings,
        meter=services.meter,
    )


@celery.task(
    name=DELIVER_WEBHOOK,
    ignore_result=True,
    # The attempt's own deadline is webhooks.timeout_s; these only catch a stuck process.
    soft_time_limit=settings.webhooks.timeout_s + 15,
    time_limit=settings.webhooks.timeout_s + 30,
)
def deliver_webhook(msg_id: str, attempt: int) -> None:
    if _deliverer is None:  # a solo pool has no worker_process_init
        _init_process()
    assert _deliverer is not None
    _deliverer.deliver(msg_id, attempt)


@worker_ready.connect
def start_scheduler(**_: Any) -> None:
    threading.Thread(target=_schedule_forever, daemon=True, name="webhook-scheduler").start()


def _schedule_forever() -> None:
    outbox = Outbox(services.redis, settings)
    while True:
        try:
            for msg_id, attempts in outbox.due(time.time()):
                send(msg_id, attempts + 1)
        except Exception:  # keep scheduling whatever one pass hit
            log.exception("webhook scheduler pass failed")
        time.sleep(SCHEDULER_PERIOD_S)

"""`build_services(settings, role)`: what each process works with, built one way for the three
programs — gunicorn's app (model/api/app.py), the Celery worker (model/worker.py; the
train-worker is the same module) and the webhooks worker (model/webhooks/worker.py).

- Redis clients under one timeout policy (model/redis_client.py `client_options`): a text client
  for the task store, the meter and the outbox, and a binary-safe one for uploads and model
  blobs. The workers' retry through a Redis outage; the HTTP side's answer at once.
- The stores (tasks, uploads; API keys where the role reads them), the meter and Celery.

Settings are passed in, never read at import. Code deep inside a task's end
(model/lifecycle/ending.py, model/webhooks/events.py) reads the process's services with
`current()`: the settings handed to `create_app` reach it.

Torch-free and light: the HTTP process imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from celery import Celery
from redis import Redis

from model.celery_app import make_celery
from model.keys import KeyCache, KeyStore
from model.metrics.record import Meter
from model.redis_client import client_options
from model.settings import Settings, get_settings
from model.tasks.store import TaskStore
from model.uploads import UploadStore

# "script": what a process that built none gets (a test, a script): no keys, no patience.
Role = Literal["api", "worker", "webhooks", "script"]


@dataclass
class Services:
    settings: Settings
    role: Role
    redis: Redis  # replies decoded as text
    store: TaskStore
    uploads: UploadStore  # binary-safe client: uploaded files, model blobs
    meter: Meter
    celery: Celery
    keys: KeyStore | None = None  # the API and the webhooks worker (webhook secrets)
    key_cache: KeyCache | None = None  # the API: keys found a moment ago, else `keys`


_current: Services | None = None


def build_services(settings: Settings, role: Role) -> Services:
    """The process's services (the last built is `current()`). Nothing connects yet: clients
    connect on first use, in whichever process (a prefork child) uses them."""
    patience = settings.redis.outage_patience_s
    redis = Redis.from_url(
        settings.redis_url(), decode_responses=True, **client_options(patience, role)
    )
    uploads = UploadStore(
        Redis.from_url(
            settings.redis_url(),
            decode_responses=False,
            **client_options(patience, role, binary=True),
        ),
        settings.uploads_dir,
    )
    celery = make_celery(settings)
    # Not -c on supervisord's command line: read at each start, so a settings edit applies.
    celery.conf.worker_concurrency = (
        settings.webhooks.concurrency if role == "webhooks" else settings.worker.concurrency
    )
    keys = KeyStore(settings.keys_db) if role in ("api", "webhooks") else None
    global _current
    _current = Services(
        settings=settings,
        role=role,
        redis=redis,
        store=TaskStore(redis, settings.results.ttl_s, settings.results.tombstone_ttl_s),
        uploads=uploads,
        meter=Meter(redis, settings.metrics.max_hosts),
        celery=celery,
        keys=keys,
        key_cache=KeyCache(keys) if role == "api" and keys is not None else None,
    )
    return _current


def meter_of(redis: Redis) -> Meter:
    """A Meter writing with this client, with the process's `metrics.max_hosts`."""
    return Meter(redis, current().settings.metrics.max_hosts)


def current() -> Services:
    """The services this process built; one that built none (a test, a script) gets a script's,
    from the settings of flask_config.yaml and the environment."""
    return _current if _current is not None else build_services(get_settings(), "script")

"""What each program works with, built one way (model/services.py): Redis clients under one
timeout policy, the stores, the meter, Celery; and the settings handed to `create_app` reach
the code that reads them, not settings read once at import."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from model.lifecycle.ending import announce_end
from model.redis_client import PatientRetry
from model.services import build_services, current
from model.settings import Settings
from model.tasks.states import State
from model.tasks.store import TaskStore
from model.webhooks.events import message_key


@pytest.mark.parametrize("role", ["api", "worker", "webhooks", "script"])
def test_every_client_bounds_its_connect_and_each_reply(role: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis={"outage_patience_s": 7})
    svc = build_services(settings, role)  # type: ignore[arg-type]
    for client, binary in ((svc.redis, False), (svc.uploads.redis, True)):
        options = client.connection_pool.connection_kwargs
        assert options["socket_connect_timeout"] == 2
        assert options["socket_timeout"] == (30 if binary else 5)
        assert options["decode_responses"] is not binary
        patient = isinstance(options.get("retry"), PatientRetry)
        # The workers ride out a Redis restart; the HTTP side answers at once.
        assert patient is (role in ("worker", "webhooks")), role
        if patient:
            assert options["retry"].patience_s == 7
    assert svc.store.redis is svc.redis and svc.meter.redis is svc.redis
    assert svc.meter.max_hosts == settings.metrics.max_hosts
    assert (svc.keys is not None) is (role in ("api", "webhooks"))
    assert svc.celery.conf.worker_concurrency == (
        settings.webhooks.concurrency if role == "webhooks" else settings.worker.concurrency
    )
    assert current() is svc


def test_the_task_body_document_follows_the_apps_settings(make_app) -> None:
    app = make_app(jobs={"detect": {"timeout_max_s": 1234, "max_images": 7}}).application
    body = app.api_doc["paths"]["/task"]["post"]["requestBody"]["content"]
    detect = next(
        s for s in body["application/json"]["schema"]["oneOf"] if "detect" in str(s["properties"])
    )
    timeout = [b for b in detect["properties"]["timeout"]["anyOf"] if b.get("type") == "number"]
    assert timeout[0]["maximum"] == 1234
    assert "at most 7" in str(body["multipart/form-data"]["schema"]["properties"]["images"])


def test_a_task_ended_in_the_api_announces_with_the_apps_settings(
    make_app, clean_redis: redis.Redis
) -> None:
    public = "https://scriptorium.example.org/api"
    make_app(webhooks={"retry_for_s": 123}, http={"public_url": public})
    store = TaskStore(clean_redis, 3600, 7200)
    record = store.create("o", "noop", {}, 0, 60, webhook={"url": "https://example.org/hook"})
    assert store.finish(record.id, State.CANCELLED, only_from=[State.QUEUED])
    announce_end(store, record.id)
    message = clean_redis.hgetall(message_key(f"msg_{record.id}_completed"))
    assert float(message["retry_until"]) - float(message["created_at"]) == pytest.approx(123)
    assert f"{public}/status/{record.id}" in message["body"]

"""`python -m model smoke`: what a release must pass before `current` points at it.

Runs in the new release with the live settings, without touching the running stack: the app builds
and answers in-process, the default model is found, the worker module imports without loading a
model, and the nginx template renders into a config `nginx -t` accepts. A worker host (role worker)
runs no app and no nginx: there the checks are the models, the worker's import, and Redis answering
through the tunnel with the password copied from the API host.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from model import frontdoor
from model.settings import PROJECT_ROOT, Settings


def _app_answers(settings: Settings) -> None:
    from model.wsgi import app

    client = app.test_client()
    # On a first install Redis is not up yet: the rate limiter logs that (and lets requests
    # through), which is noise here.
    logging.disable(logging.ERROR)
    try:
        for path in ("/healthz", "/openapi/openapi.json"):
            resp = client.get(path)
            assert resp.status_code == 200, f"GET {path} answered {resp.status_code}"
    finally:
        logging.disable(logging.NOTSET)
    # The HTTP side must stay light: torch belongs to the worker only.
    assert "torch" not in sys.modules, "building the app imported torch"


def _default_model_found(settings: Settings) -> None:
    from model.inference.registry import discover

    found = discover(settings.model_dirs)
    dirs = ", ".join(map(str, settings.model_dirs))
    assert settings.models.default in found, (
        f"default model {settings.models.default!r} not in {dirs} (found {sorted(found)})"
    )


def _worker_imports(settings: Settings) -> None:
    from model import worker
    from model.celery_app import RUN_JOB

    assert RUN_JOB in worker.celery.tasks, f"worker does not register {RUN_JOB}"
    assert not worker._resources, "importing the worker loaded models"


def _webhooks_worker_imports(settings: Settings) -> None:
    from model.celery_app import DELIVER_WEBHOOK
    from model.webhooks import worker

    assert DELIVER_WEBHOOK in worker.celery.tasks, f"webhooks worker lacks {DELIVER_WEBHOOK}"


def _nginx_config_valid(settings: Settings) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # The live settings, but every file nginx opens in a scratch dir.
        values = {**frontdoor.nginx_values(settings), "run_dir": tmp, "log_dir": tmp}
        text = frontdoor.render((PROJECT_ROOT / frontdoor.NGINX_TEMPLATE).read_text(), values)
        (Path(tmp) / "nginx").mkdir()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(text)
        nginx = frontdoor.find_binary("nginx")
        check = subprocess.run(
            [nginx, "-t", "-q", "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, f"nginx -t: {check.stderr.strip()}"


def _redis_reachable(settings: Settings) -> None:
    from redis import Redis, RedisError

    tunnel = settings.redis_tunnel.server
    assert tunnel, "redis_tunnel.server is not set (the API host's tunnel end, host:port)"
    client = Redis.from_url(settings.redis_url(), socket_timeout=10, socket_connect_timeout=10)
    where = f"{settings.redis.host}:{settings.redis.port} (tunnel to {tunnel})"
    try:
        assert client.ping(), f"redis at {where} did not answer PING"
    except RedisError as exc:
        raise AssertionError(f"redis at {where}: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


CHECKS: list[Callable[[Settings], None]] = [
    _app_answers,
    _default_model_found,
    _worker_imports,
    _webhooks_worker_imports,
    _nginx_config_valid,
]
# A worker host: the worker alone (no app, no nginx), and the API host's Redis through the tunnel.
WORKER_CHECKS: list[Callable[[Settings], None]] = [
    _default_model_found,
    _worker_imports,
    _redis_reachable,
]


def run_smoke_checks(settings: Settings, redis: bool = True) -> list[str]:
    """Every check runs; the failures come back as messages (empty: the release may go live).
    redis=False leaves out the Redis check of a worker host (before its tunnel first starts)."""
    failures = []
    checks = WORKER_CHECKS if settings.role == "worker" else CHECKS
    for check in checks:
        if check is _redis_reachable and not redis:
            continue
        try:
            check(settings)
        except Exception as exc:  # noqa: BLE001 - report every failing check, not only the first
            failures.append(f"{check.__name__.lstrip('_')}: {exc}")
    return failures

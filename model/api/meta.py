"""GET /models, /healthz, /readyz."""

from __future__ import annotations

import json

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from model.api.auth import SECURITY, require_key
from model.api.errors import COMMON_RESPONSES, ErrorResponse, error_response
from model.api.schemas import Health, ModelList, Readiness
from model.api.services import services
from model.inference.registry import discover
from model.store import WORKERS_PREFIX

models_api = APIBlueprint(
    "models",
    __name__,
    abp_tags=[Tag(name="models")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
models_api.before_request(require_key)
probes_api = APIBlueprint("probes", __name__, abp_tags=[Tag(name="probes")])


@models_api.get("/models", responses={200: ModelList, 401: ErrorResponse})
def list_models() -> Response:
    """Models a task may name in `params.model`."""
    settings = services().settings
    found = discover(settings.model_dirs)
    return jsonify({"models": [m.describe(settings.models.default) for m in found.values()]})


@probes_api.get("/healthz", responses={200: Health})
def healthz() -> Response:
    """The HTTP process is up."""
    return jsonify({"status": "ok"})


@probes_api.get("/readyz", responses={200: Readiness, 503: ErrorResponse})
def readyz() -> Response:
    """Redis answers and at least one worker process has its models loaded; the workers, and
    how many tasks wait and run (the operator page shows them to admin keys)."""
    svc = services()
    redis = svc.redis
    try:
        redis.ping()
        keys = list(redis.scan_iter(match=f"{WORKERS_PREFIX}*", count=100))
        workers = [json.loads(raw) for raw in redis.mget(keys) if raw] if keys else []
        queued, running = svc.store.queued_count(), svc.store.running_count()
    except Exception:  # noqa: BLE001 - any redis failure means not ready
        return error_response(503, "not_ready", "redis is not reachable", {"Retry-After": "5"})
    if not workers:
        return error_response(
            503, "not_ready", "no worker with a loaded model yet", {"Retry-After": "5"}
        )
    return jsonify(
        {"status": "ready", "redis": True, "workers": workers, "queued": queued, "running": running}
    )

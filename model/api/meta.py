"""GET /models (what every live worker, on any host, has: tasks/fleet.py) and DELETE
/models/<name> (a key's own model); GET /jobs (the registered job types:
model/jobs/registry.py); /healthz, /readyz."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from model.api.auth import SECURITY, is_admin, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, error_response
from model.api.schemas import Health, JobType, JobTypeList, ModelList, Readiness
from model.api.services import Services, services
from model.inference.catalog import Catalog, ModelStoreError, describe, validate_name, visible
from model.inference.registry import discover
from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.keyspace import QUEUE_KEY, QUEUES_KEY, RUNNING_KEY, queue_index_key
from model.settings import Settings
from model.tasks import fleet

models_api = APIBlueprint(
    "models",
    __name__,
    abp_tags=[Tag(name="models")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
models_api.before_request(require_key)
jobs_api = APIBlueprint(
    "jobs",
    __name__,
    abp_tags=[Tag(name="jobs")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
jobs_api.before_request(require_key)
probes_api = APIBlueprint("probes", __name__, abp_tags=[Tag(name="probes")])
INSTALLATION_HEADER = "X-Scriptorium-Installation"


@probes_api.after_request
def name_the_installation(response: Response) -> Response:
    """Which installation answers (its data dir's id): cloudvps_setup.sh --start checks that the
    stack on its port is the one it started, not another one already there."""
    response.headers[INSTALLATION_HEADER] = services().settings.installation_id()
    return response


def catalog(svc: Services) -> Catalog:
    return Catalog(svc.uploads.redis, svc.settings.models.max_bytes)


def known_models(svc: Services, owner: str) -> dict[str, dict[str, Any]]:
    """Models a task of the key `owner` may name: those some live worker has loaded, on any
    host, those in this host's model folders (a task for one waits in its queue until a worker
    that has it runs) and the imported ones this key may use — everyone's and its own
    (catalog.visible; every worker loads them; `hosts` says which have so far). Another key's
    model is not listed, as if it did not exist."""
    default = svc.settings.models.default
    found = {
        name: {**describe(card, default), "workers": 0, "hosts": [], "devices": []}
        for name, card in catalog(svc).cards().items()
        if visible(card, owner)
    }
    found.update(
        (name, {**info.describe(default), "workers": 0, "hosts": [], "devices": []})
        for name, info in discover(svc.settings.model_dirs).items()
    )
    for name, live in fleet.models(fleet.live(svc.redis)).items():
        if live.get("imported") and name not in found:
            continue  # removed (workers drop it at their next sync), or another key's
        found[name] = {**found.get(name, {}), **live, "default": name == default}
    return found


@models_api.get("/models", responses={200: ModelList, 401: ErrorResponse})
def list_models() -> Response:
    """Models a task of this key may name in `params.model`, with the live workers that have
    each loaded."""
    return jsonify({"models": list(known_models(services(), g.owner).values())})


class ModelPath(BaseModel):
    name: str = Field(max_length=64)


@models_api.delete("/models/<name>", responses={204: None, 403: ErrorResponse, 404: ErrorResponse})
def remove_model(path: ModelPath) -> Response:
    """Withdraw an imported model this key owns from every worker host (frees its place in the
    key's quota); a model for every key needs an admin key. Shipped models stay."""
    svc = services()
    models = catalog(svc)
    try:
        card = models.card(validate_name(path.name))
    except ModelStoreError:
        card = None  # not a name: no model
    if card is None or not visible(card, g.owner):
        raise ApiError(404, "model_not_found", f"no imported model {path.name!r} of this key")
    if card.get("owner") is None and not is_admin():
        raise ApiError(403, "forbidden", "a model for every key is removed with an admin key")
    models.remove(path.name)
    return Response(status=204)


SCHEMAS = "/openapi/openapi.json#/components/schemas/"


def job_type(spec: JobSpec, settings: Settings) -> JobType:
    return JobType(
        name=spec.name,
        summary=spec.summary,
        docs=spec.docs,
        limits=spec.limits_in(settings),
        uploads=spec.uploads,
        source_task_types=list(spec.source_task_types),
        params_schema=SCHEMAS + spec.params.__name__,
        input_schema=SCHEMAS + spec.input.__name__,
        item_schema=SCHEMAS + spec.item.__name__,
    )


@jobs_api.get("/jobs", responses={200: JobTypeList, 401: ErrorResponse})
def list_jobs() -> Response:
    """Every job type a task may name in `type`, with its limits here and its documentation."""
    settings = services().settings
    listed = JobTypeList(jobs=[job_type(spec, settings) for spec in JOBS.values()])
    return jsonify(listed.model_dump(mode="json"))


@probes_api.get("/healthz", responses={200: Health})
def healthz() -> Response:
    """The HTTP process is up."""
    return jsonify({"status": "ok"})


@probes_api.get("/readyz", responses={200: Readiness, 503: ErrorResponse})
def readyz() -> Response:
    """Redis answers and a live worker, on any host, has the default model loaded. Lists every
    live worker process, how many tasks wait and run (the operator page shows them to admin
    keys) and, per queue with tasks waiting or workers taking it, both counts (tasks waiting
    where no live worker takes them: their model's hosts are all down)."""
    svc = services()
    try:
        workers = fleet.live(svc.redis)
        queues = sorted(
            {q for beat in workers for q in beat.get("queues", [])}
            | set(svc.redis.smembers(QUEUES_KEY))
        )
        with svc.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(QUEUE_KEY)
            pipe.scard(RUNNING_KEY)
            for queue in queues:
                pipe.zcard(queue_index_key(queue))
            queued, running, *per_queue = pipe.execute()
    except Exception:  # noqa: BLE001 - any redis failure means not ready
        return error_response(503, "not_ready", "redis is not reachable", {"Retry-After": "5"})
    loads = {
        queue: {"queued": count, "workers": fleet.serving(workers, queue)}
        for queue, count in zip(queues, per_queue, strict=True)
    }
    default = svc.settings.models.default
    if not any(default in beat.get("models", []) for beat in workers):
        return error_response(
            503,
            "not_ready",
            f"no worker with the default model ({default}) loaded yet",
            {"Retry-After": "5"},
        )
    return jsonify(
        {
            "status": "ready",
            "redis": True,
            "workers": workers,
            "queued": queued,
            "running": running,
            "queues": {
                queue: load for queue, load in loads.items() if load["queued"] or load["workers"]
            },
        }
    )

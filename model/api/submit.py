"""POST /task: read the request (JSON, or multipart with uploads), let the job type's declaration
(model/jobs/registry.py) validate it and turn it into typed task inputs, then queue it.

Nothing here knows a particular job type: request models, model-name fields, inputs and input
limits all come from the job's JobSpec.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Response, g, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ValidationError

from model import uploads
from model.api.admission import (
    check_active_per_key,
    check_backpressure,
    check_json_depth,
    claimed_by,
    earlier_submit,
    idempotency_claim,
    request_fingerprint,
)
from model.api.auth import SECURITY, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, describe_validation_error
from model.api.meta import catalog, known_models
from model.api.request_doc import UPLOAD_JOB, task_request_body
from model.api.schemas import REQUEST_MODELS, TaskCreated, Webhook
from model.api.services import Services, services
from model.api.tasks import ERRORS
from model.celery_app import queue_for, send_run
from model.ending import end_task
from model.iiif.presentation import document_kind
from model.jobs.contract import ImageUpload, InputRejected, ManifestUpload, TaskInput, TaskSpec
from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.metrics.record import meter_of
from model.settings import get_settings
from model.sources.addresses import AddressPolicy
from model.sources.sniff import sniff_image
from model.store import AlreadyClaimed, State

api = APIBlueprint(
    "submit",
    __name__,
    abp_tags=[Tag(name="tasks", description="Submit, poll and stop jobs")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(require_key)

FILE_PARTS = ("images", "manifest")


@dataclass
class Submission:
    """A parsed POST /task: the job, its validated request, and uploaded files (read)."""

    job: JobSpec
    request: Any  # the job's request model
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, bytes)
    manifests: list[tuple[str, bytes]] = field(default_factory=list)  # (name, bytes)


# --- reading the request ------------------------------------------------------------------------


def _json_field(raw: str | None, name: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"form field {name!r} is not valid JSON") from exc
    check_json_depth(value, services().settings.limits.max_json_depth)
    return value


def _form_number(text: str) -> float | str:
    """A form field's number (validation refuses what is left as text)."""
    try:
        return float(text)
    except ValueError:
        return text


def _multipart_fields() -> dict[str, Any]:
    """The fields of a multipart submit, as the JSON body would carry them."""
    form = request.form
    misplaced = [name for name in FILE_PARTS if name in form]
    if misplaced:
        raise ApiError(
            422,
            "invalid_request",
            f"{misplaced[0]!r} must be a file part (curl -F '{misplaced[0]}=@file'), not a field",
        )
    data: dict[str, Any] = {"type": form.get("type", UPLOAD_JOB)}
    if data["type"] in JOBS and not JOBS[data["type"]].uploads:
        raise ApiError(
            415, "unsupported_media_type", f"send a {data['type']} task as application/json"
        )
    for name in ("params", "input", "webhook"):
        value = _json_field(form.get(name), name)
        if value is not None:
            data[name] = value
    if "timeout" in form:  # an empty value is invalid, not "no timeout"
        data["timeout"] = _form_number(form["timeout"])
    return data


def _json_fields() -> dict[str, Any]:
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "body must be a JSON object")
    check_json_depth(data, services().settings.limits.max_json_depth)
    return data


def _validated(data: dict[str, Any]) -> tuple[JobSpec, BaseModel]:
    job_type = data.get("type")
    name = job_type if isinstance(job_type, str) and job_type in JOBS else UPLOAD_JOB
    try:
        return JOBS[name], REQUEST_MODELS[name].model_validate(data)
    except ValidationError as exc:
        message, details = describe_validation_error(exc)
        raise ApiError(422, "invalid_request", message, details=details) from exc


def _image_uploads() -> list[tuple[str, bytes]]:
    """(filename, bytes) of each uploaded image, refusing anything that is not one."""
    read = []
    for upload in request.files.getlist("images"):
        if not (upload.filename or upload.content_length):
            continue
        data = upload.read()
        fmt = sniff_image(data) if data else None
        if fmt is None:
            raise ApiError(
                415, "unsupported_media_type", f"upload {upload.filename!r} is not a readable image"
            )
        read.append((upload.filename or "", data))
    return read


def _manifest_uploads() -> list[tuple[str, bytes]]:
    """Uploaded manifests (part `manifest`): JSON of a IIIF manifest or collection."""
    read = []
    for upload in request.files.getlist("manifest"):
        data = upload.read()
        try:
            kind = document_kind(json.loads(data))
        except (ValueError, RecursionError):
            kind = None
        if kind is None:
            raise ApiError(
                422,
                "invalid_manifest",
                f"upload {upload.filename!r} is not a IIIF manifest or collection (JSON)",
            )
        read.append((upload.filename or "manifest.json", data))
    return read


def read_submission() -> Submission:
    if request.mimetype == "application/json":
        job, task_request = _validated(_json_fields())
        return Submission(job, task_request)
    if request.mimetype == "multipart/form-data":
        job, task_request = _validated(_multipart_fields())
        return Submission(job, task_request, _image_uploads(), _manifest_uploads())
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


# --- checking it --------------------------------------------------------------------------------


def _check_model(svc: Services, name: str | None, task: str) -> None:
    if name is None:
        return
    if any(part in name for part in ("/", "\\", "..")) or name.endswith((".pt", ".onnx")):
        raise ApiError(
            400, "invalid_model_name", "model must be a name from GET /models, not a path"
        )
    found = known_models(svc).get(name)
    if found is None:
        raise ApiError(422, "unknown_model", f"no model named {name!r}; see GET /models")
    if found["task"] != task:
        raise ApiError(
            422,
            "wrong_model_task",
            f"{name!r} is a {found['task']} model; this needs a {task} model",
        )


def _timeout(svc: Services, submission: Submission) -> float:
    limits = svc.settings.job_limits(submission.job.name)
    timeout = submission.request.timeout or limits.timeout_default_s
    if timeout > limits.timeout_max_s:
        raise ApiError(
            422,
            "invalid_timeout",
            f"timeout may be at most {limits.timeout_max_s} s for {submission.job.name}",
        )
    return timeout


def _upload_files(submission: Submission) -> list[bytes]:
    """The uploaded files in the order of their inputs: images, then manifests."""
    return [data for _, data in submission.images] + [data for _, data in submission.manifests]


def _check_upload_size(svc: Services, submission: Submission) -> None:
    cap = svc.settings.upload_cap_bytes()
    if sum(len(data) for data in _upload_files(submission)) > cap:
        raise ApiError(413, "uploads_too_large", f"a task's uploads may total {cap} bytes")


def _upload_inputs(task_id: str, submission: Submission) -> list[TaskInput]:
    """Where the uploads will be stored (saved only once the task is sure to be queued)."""
    entries: list[TaskInput] = [
        ImageUpload(key=uploads.key_for(task_id, index), filename=name)
        for index, (name, _) in enumerate(submission.images)
    ]
    start = len(submission.images)
    entries += [
        ManifestUpload(key=uploads.key_for(task_id, index), filename=name)
        for index, (name, _) in enumerate(submission.manifests, start=start)
    ]
    return entries


def _webhook(svc: Services, webhook: Webhook | None) -> dict[str, Any] | None:
    """The task's webhook as stored, once what can be refused now is: a URL whose host is an IP
    address that is not public (a host name is resolved, and its addresses checked, at each
    delivery), an interval below the server's minimum, a key without a webhook secret."""
    if webhook is None:
        return None
    host = urlsplit(webhook.url).hostname or ""
    policy = AddressPolicy.from_list(svc.settings.fetch.allow)
    if not policy.host_allowed(host):
        address = "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host
        try:
            allowed = policy.address_allowed(address)
        except ValueError:  # a host name
            allowed = True
        if not allowed:
            raise ApiError(
                422,
                "webhook_refused",
                f"webhook.url: {host} is not a public address; webhooks are delivered to public "
                "addresses only",
            )
    least = svc.settings.webhooks.min_progress_interval_s
    if "progress" in webhook.events and webhook.progress_interval_s < least:
        raise ApiError(
            422,
            "invalid_request",
            f"webhook.progress_interval_s: progress events are sent at most every {least:g} s",
        )
    if not svc.keys.has_webhook_secret(g.owner):
        raise ApiError(
            422,
            "webhook_secret_missing",
            f"the key {g.owner!r} has no webhook secret to sign deliveries with; the operator "
            f"creates it (python -m model keys webhook-secret {g.owner}) and gives it to you",
        )
    return webhook.model_dump(mode="json")


# --- the view -----------------------------------------------------------------------------------


@api.post(
    "/task",
    responses={202: TaskCreated, **ERRORS},
    openapi_extensions=task_request_body(get_settings()),
)
def submit_task() -> Response:
    """Submit a job; answers 202 with the task id and where to poll it."""
    svc = services()
    submission = read_submission()  # reads the whole body, even for a retry
    job, task_request = submission.job, submission.request
    fingerprint = request_fingerprint(
        task_request.model_dump(mode="json"), _upload_files(submission)
    )
    earlier = earlier_submit(svc, fingerprint)
    if earlier is not None and (existing := svc.store.get(earlier)) is not None:
        return created_response(earlier, existing.state)  # a retried submit
    for field_name, task in job.model_fields.items():
        _check_model(svc, getattr(task_request.params, field_name), task)
    timeout = _timeout(svc, submission)
    _check_upload_size(svc, submission)
    webhook = _webhook(svc, task_request.webhook)
    task_id = uuid.uuid4().hex
    inputs = [*job.task_inputs(task_request.input), *_upload_inputs(task_id, submission)]
    try:
        job.check(task_request.input, inputs, svc.settings)
    except InputRejected as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    check_backpressure(svc)
    check_active_per_key(svc, job)
    svc.uploads.save(task_id, _upload_files(submission), svc.settings.upload_ttl_s(timeout))
    spec = TaskSpec(params=task_request.params.model_dump(), inputs=inputs)
    try:
        return _enqueue(svc, task_id, job, spec, timeout, webhook, idempotency_claim(fingerprint))
    except AlreadyClaimed as claimed:  # the same submit, racing: one task for both
        svc.uploads.discard(task_id, spec.model_dump())
        return created_response(claimed_by(claimed, fingerprint), State.QUEUED)


def _enqueue(
    svc: Services,
    task_id: str,
    job: JobSpec,
    spec: TaskSpec,
    timeout: float,
    webhook: dict[str, Any] | None = None,
    idempotency: tuple[str, str] | None = None,
) -> Response:
    total = job.initial_total(spec.inputs)
    named = [spec.params.get(name) for name in job.model_fields]
    queue = job.queue or queue_for(svc.settings, named, catalog(svc).cards() if any(named) else ())
    record = svc.store.create(
        g.owner,
        job.name,
        spec.model_dump(),
        total,
        timeout,
        task_id,
        webhook=webhook,
        queue=queue,
        idempotency=idempotency,
    )
    try:
        send_run(svc.celery, svc.settings, task_id, timeout, queue, record.lane)
        svc.store.mark_sent(task_id)
    except Exception as exc:
        error = ("queue_unavailable", "could not enqueue")
        end_task(svc.store, svc.uploads, task_id, State.FAILED, error)
        raise ApiError(
            503,
            "queue_unavailable",
            "the task queue is unavailable; retry later",
            {"Retry-After": "5"},
        ) from exc
    meter_of(svc.redis).task_submitted(job.name)
    return created_response(task_id, record.state)


def created_response(task_id: str, state: State) -> Response:
    body = TaskCreated(
        task_id=task_id,
        state=state,
        status_url=f"/status/{task_id}",
        terminate_url=f"/terminate/{task_id}",
    )
    response = jsonify(body.model_dump(mode="json"))
    response.status_code = 202
    response.headers["Location"] = body.status_url
    return response

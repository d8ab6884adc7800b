"""POST /task: read the request (JSON, or multipart with uploads), let the job type's declaration
(model/jobs/registry.py) validate it and turn it into typed task inputs, then queue it.

Nothing here knows a particular job type: request models, model-name fields, inputs and input
limits all come from the job's JobSpec.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Response, g, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ValidationError

from model import uploads
from model.api import publishing
from model.api.admission import (
    RETRY_AFTER_FULL_S,
    check_active_per_key,
    check_backpressure,
    check_json_depth,
    check_json_size,
    claimed_by,
    earlier_submit,
    idempotency_claim,
    read_json_body,
    request_fingerprint,
)
from model.api.auth import SECURITY, is_admin, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, describe_validation_error
from model.api.meta import catalog, known_models
from model.api.request_doc import UPLOAD_JOB
from model.api.schemas import REQUEST_MODELS, TaskCreated, Webhook
from model.api.services import Services, services
from model.api.tasks import ERRORS
from model.celery_app import queue_for, send_run
from model.iiif.presentation import document_kind
from model.jobs.contract import (
    DatasetUpload,
    ImageUpload,
    InputRejected,
    ManifestUpload,
    SourceTask,
    TaskInput,
    TaskSpec,
)
from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.lifecycle.ending import end_task
from model.sources.addresses import AddressPolicy, literal_address
from model.sources.sniff import sniff_image
from model.tasks.states import State
from model.tasks.store import AlreadyClaimed
from model.uploads import OverBudget

api = APIBlueprint(
    "submit",
    __name__,
    abp_tags=[Tag(name="tasks", description="Submit, poll and stop jobs")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(require_key)

FILE_PARTS = ("images", "manifest", "dataset")


@dataclass
class Submission:
    """A parsed POST /task: the job, its validated request, and uploaded files (read)."""

    job: JobSpec
    request: Any  # the job's request model
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, bytes)
    manifests: list[tuple[str, bytes]] = field(default_factory=list)  # (name, bytes)
    datasets: list[tuple[str, bytes]] = field(default_factory=list)  # zips (evaluate)


# --- reading the request ------------------------------------------------------------------------


def _json_field(raw: str | None, name: str) -> Any:
    if raw is None or raw == "":
        return None
    check_json_depth(raw, services().settings.limits.max_json_depth)  # before parsing it
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"form field {name!r} is not valid JSON") from exc


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
    # Size (cap_json_body, before the body is read) and depth are checked on the bytes: the
    # objects are built only for a body that passes both.
    limits = services().settings.limits
    read_json_body(limits.max_json_body_bytes, limits.max_json_depth)
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "body must be a JSON object")
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
    settings = services().settings
    for upload in request.files.getlist("manifest"):
        name = upload.filename or "manifest.json"
        # Bounded before it is read whole, let alone parsed (a manifest's objects take tens of
        # times its bytes): iiif.max_json_bytes, as for a fetched one.
        data = upload.stream.read(settings.iiif.max_json_bytes + 1)
        check_json_size(len(data), settings.iiif.max_json_bytes, f"manifest upload {name!r}")
        check_json_depth(data, settings.limits.max_json_depth)
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


def _dataset_uploads() -> list[tuple[str, bytes]]:
    """Uploaded datasets (part `dataset`): zip archives (YOLO images + labels)."""
    read = []
    for upload in request.files.getlist("dataset"):
        data = upload.read()
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise ApiError(
                422, "invalid_dataset", f"upload {upload.filename!r} is not a zip archive"
            )
        read.append((upload.filename or "dataset.zip", data))
    return read


def read_submission() -> Submission:
    if request.mimetype == "application/json":
        job, task_request = _validated(_json_fields())
        return Submission(job, task_request)
    if request.mimetype == "multipart/form-data":
        job, task_request = _validated(_multipart_fields())
        return Submission(
            job, task_request, _image_uploads(), _manifest_uploads(), _dataset_uploads()
        )
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


# --- checking it --------------------------------------------------------------------------------


def _check_model(svc: Services, name: str | None, task: str, named: bool = True) -> None:
    """`name` (None: the service's default model) exists for this key and does `task`; named:
    the request names it, else it is the job's own default for a param left out."""
    if name is None:
        return
    if any(part in name for part in ("/", "\\", "..")) or name.endswith((".pt", ".onnx")):
        raise ApiError(
            400, "invalid_model_name", "model must be a name from GET /models, not a path"
        )
    found = known_models(svc, g.owner).get(name)
    if found is None:
        what = "" if named else " (the job's default, as the request names none)"
        raise ApiError(422, "unknown_model", f"no model named {name!r}{what}; see GET /models")
    if found["task"] != task:
        raise ApiError(
            422,
            "wrong_model_task",
            f"{name!r} is a {found['task']} model; this needs a {task} model",
        )


# States in which a task has a result another job can work on.
SOURCE_STATES = (State.SUCCEEDED, State.TIMED_OUT, State.CANCELLED)


def _check_sources(svc: Services, job: JobSpec, inputs: list[TaskInput]) -> None:
    """A `task` input names a finished task of a type the job takes, of this key: 404 for an
    unknown one (another key's task is no more visible here than through GET /status), 422 for
    one of another type or still running."""
    if not job.source_task_types:
        return
    wanted = " or ".join(job.source_task_types)
    for entry in inputs:
        if not isinstance(entry, SourceTask):
            continue
        record = svc.store.get(entry.task_id)
        if record is None or record.owner != g.owner:
            raise ApiError(404, "source_not_found", f"no task {entry.task_id} of this key")
        if record.type not in job.source_task_types or record.state not in SOURCE_STATES:
            raise ApiError(
                422,
                "source_unusable",
                f"task {entry.task_id} is a {record.type} task in state {record.state.value}; "
                f"{job.name} needs a finished {wanted} task",
            )


def _timeout(svc: Services, submission: Submission) -> float:
    limits = submission.job.limits_in(svc.settings)
    timeout = submission.request.timeout or limits.timeout_default_s
    if timeout > limits.timeout_max_s:
        raise ApiError(
            422,
            "invalid_timeout",
            f"timeout may be at most {limits.timeout_max_s} s for {submission.job.name}",
        )
    return timeout


def _upload_files(submission: Submission) -> list[bytes]:
    """The uploaded files in the order of their inputs: images, manifests, then datasets."""
    parts = (submission.images, submission.manifests, submission.datasets)
    return [data for part in parts for _, data in part]


def _check_upload_size(svc: Services, submission: Submission) -> None:
    cap = svc.settings.upload_cap_bytes()
    if sum(len(data) for data in _upload_files(submission)) > cap:
        raise ApiError(413, "uploads_too_large", f"a task's uploads may total {cap} bytes")


def _reserve_uploads(svc: Services, task_id: str, submission: Submission) -> None:
    """Hold the uploads' bytes against the key's budget and the service's (Redis memory)."""
    size = sum(len(data) for data in _upload_files(submission))
    settings = svc.settings.uploads
    budgets = (settings.max_held_bytes_total, settings.max_held_bytes_per_key)
    if size > min(budgets):  # could never fit, however long it waits
        raise ApiError(
            413, "uploads_too_large", f"uploads held at once may total {min(budgets)} bytes"
        )
    try:
        svc.uploads.reserve(task_id, g.owner, size, budgets)
    except OverBudget as exc:
        if exc.scope == "key":
            message = (
                f"this key's tasks may hold {budgets[1]} bytes of uploads at once and this "
                f"task's {size} would pass it; retry once some of them have ended"
            )
        else:
            message = (
                f"the service holds as many uploads as it may ({budgets[0]} bytes); retry once "
                "some tasks have ended"
            )
        raise ApiError(
            429,
            "upload_budget_exceeded",
            message,
            {"Retry-After": RETRY_AFTER_FULL_S},
        ) from exc


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
    start += len(submission.manifests)
    entries += [
        DatasetUpload(key=uploads.key_for(task_id, index), filename=name)
        for index, (name, _) in enumerate(submission.datasets, start=start)
    ]
    return entries


def _running_max(svc: Services) -> int:
    """Tasks of this key that may run at once (0: no cap): its own, else the default."""
    own = g.api_key.max_running if g.get("api_key") is not None else None
    return svc.settings.worker.key_running_max if own is None else own


def _webhook(svc: Services, webhook: Webhook | None) -> dict[str, Any] | None:
    """The task's webhook as stored, once what can be refused now is: a URL whose host is an IP
    address that is not public (a host name is resolved, and its addresses checked, at each
    delivery), an interval below the server's minimum, a key without a webhook secret."""
    if webhook is None:
        return None
    host = urlsplit(webhook.url).hostname or ""
    policy = AddressPolicy.from_list(svc.settings.fetch.allow)
    if not policy.host_allowed(host):
        local = host == "localhost" or host.endswith(".localhost")
        address = "127.0.0.1" if local else literal_address(host)  # None: a host name
        if address is not None and not policy.address_allowed(address):
            raise ApiError(
                422,
                "webhook_refused",
                f"webhook.url: {host if address == host else f'{host} ({address})'} is not a "
                "public address; webhooks are delivered to public "
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
    # 403: a param this key may not set (train's visibility "everyone" without an admin key).
    # A source task refused is in ERRORS: 404 (not this key's) or 422 (`source_unusable`).
    responses={202: TaskCreated, **ERRORS, 403: ErrorResponse},
    # The body is documented by the app, from its settings (request_doc.document_task_body).
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
    asked = task_request.params.model_dump()
    for field_name, name in job.models_of(asked).items():
        _check_model(svc, name, job.model_fields[field_name], named=bool(asked[field_name]))
    if job.publishes_model:
        params = publishing.for_key(svc, task_request.params, g.owner, is_admin())
        task_request = task_request.model_copy(update={"params": params})
    timeout = _timeout(svc, submission)
    _check_upload_size(svc, submission)
    webhook = _webhook(svc, task_request.webhook)
    task_id = uuid.uuid4().hex
    inputs = [*job.task_inputs(task_request.input), *_upload_inputs(task_id, submission)]
    try:
        job.check(task_request.input, inputs, svc.settings)
    except InputRejected as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    _check_sources(svc, job, inputs)
    check_backpressure(svc)
    check_active_per_key(svc, job)
    _reserve_uploads(svc, task_id, submission)
    spec = TaskSpec(params=task_request.params.model_dump(), inputs=inputs)
    try:
        svc.uploads.save(task_id, _upload_files(submission), svc.settings.upload_ttl_s(timeout))
    except Exception:
        svc.uploads.release(task_id)
        raise
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
    # The models the request names route first, then a job's own default (cluster's
    # motif-embed): a task naming its own detector goes where that detector is
    resolved = job.models_of(spec.params)
    named = [spec.params.get(name) for name in resolved] + list(resolved.values())
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
        running_max=_running_max(svc),
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
    svc.meter.task_submitted(job.name)
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

"""POST /task, GET /status/<id>, DELETE /terminate/<id>: thin views over the task store."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from flask import Response, g, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import ValidationError
from werkzeug.datastructures import FileStorage

from model import uploads
from model.api.admission import (
    check_backpressure,
    check_json_depth,
    claim_idempotency,
    earlier_submit,
    request_fingerprint,
)
from model.api.auth import SECURITY, is_admin, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, describe_validation_error
from model.api.request_doc import task_request_body
from model.api.schemas import (
    REQUEST_MODELS,
    TASK_ID_PATTERN,
    AnyTaskRequest,
    Progress,
    SimilarityRequest,
    TaskCreated,
    TaskPath,
    TaskRequest,
    TaskResult,
    TaskStatus,
    timestamp,
)
from model.api.services import Services, services
from model.celery_app import RUN_JOB
from model.ending import end_task
from model.iiif.presentation import document_kind
from model.inference.registry import discover
from model.jobs import job_module
from model.settings import get_settings
from model.sources.images import sniff_image
from model.store import State, TaskRecord

tag = Tag(name="tasks", description="Submit, poll and stop jobs")
api = APIBlueprint(
    "tasks", __name__, abp_tags=[tag], abp_security=SECURITY, abp_responses=COMMON_RESPONSES
)
api.before_request(require_key)

ERRORS: dict[Any, Any] = {
    status: ErrorResponse for status in (400, 401, 404, 410, 413, 415, 422, 429, 503)
}
RETRY_AFTER_S = "1"


def _json_field(raw: str | None, name: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"form field {name!r} is not valid JSON") from exc
    check_json_depth(value, services().settings.limits.max_json_depth)
    return value


FILE_PARTS = ("images", "manifest")


def _form_number(text: str) -> float | str:
    """A form field's number (validation refuses what is left as text)."""
    try:
        return float(text)
    except ValueError:
        return text


def _multipart_data() -> tuple[dict[str, Any], list[FileStorage]]:
    """The fields of a multipart submit, as the JSON body would carry them, and its images."""
    form = request.form
    misplaced = [name for name in FILE_PARTS if name in form]
    if misplaced:
        raise ApiError(
            422,
            "invalid_request",
            f"{misplaced[0]!r} must be a file part (curl -F '{misplaced[0]}=@file'), not a field",
        )
    data: dict[str, Any] = {"type": form.get("type", "detect")}  # multipart is for detect
    for name in ("params", "input"):
        value = _json_field(form.get(name), name)
        if value is not None:
            data[name] = value
    if "timeout" in form:  # an empty value is invalid, not "no timeout"
        data["timeout"] = _form_number(form["timeout"])
    files = [f for f in request.files.getlist("images") if f.filename or f.content_length]
    return data, files


def _parse_request() -> tuple[AnyTaskRequest, list[FileStorage]]:
    files: list[FileStorage] = []
    if request.mimetype == "application/json":
        try:
            data = request.get_json(silent=True)
        except RecursionError:
            data = None
        if not isinstance(data, dict):
            raise ApiError(400, "malformed_json", "body must be a JSON object")
        check_json_depth(data, services().settings.limits.max_json_depth)
    elif request.mimetype == "multipart/form-data":
        data, files = _multipart_data()
        if data.get("type") in REQUEST_MODELS and data["type"] != "detect":
            raise ApiError(
                415, "unsupported_media_type", f"send a {data['type']} task as application/json"
            )
    else:
        raise ApiError(
            415, "unsupported_media_type", "send application/json or multipart/form-data"
        )
    try:
        job_type = data.get("type")
        model = (
            REQUEST_MODELS.get(job_type, TaskRequest) if isinstance(job_type, str) else TaskRequest
        )
        return model.model_validate(data), files
    except ValidationError as exc:
        message, details = describe_validation_error(exc)
        raise ApiError(422, "invalid_request", message, details=details) from exc


def _check_model(svc: Services, name: str | None, task: str = "detect") -> None:
    if name is None:
        return
    if any(part in name for part in ("/", "\\", "..")) or name.endswith((".pt", ".onnx")):
        raise ApiError(
            400, "invalid_model_name", "model must be a name from GET /models, not a path"
        )
    found = discover(svc.settings.model_dirs).get(name)
    if found is None:
        raise ApiError(422, "unknown_model", f"no model named {name!r}; see GET /models")
    if found.task != task:
        raise ApiError(
            422, "wrong_model_task", f"{name!r} is a {found.task} model; this needs a {task} model"
        )


def _read_uploads(files: list[FileStorage]) -> list[tuple[str, str, bytes]]:
    """(filename, suffix, bytes) of each upload, refusing anything that is not an image."""
    read = []
    for upload in files:
        data = upload.read()
        fmt = sniff_image(data) if data else None
        if fmt is None:
            raise ApiError(
                415, "unsupported_media_type", f"upload {upload.filename!r} is not a readable image"
            )
        read.append((upload.filename or "", "." + fmt.lower(), data))
    return read


def _read_manifest_uploads() -> list[tuple[str, bytes]]:
    """Uploaded manifests (multipart part `manifest`): JSON of a IIIF manifest or collection."""
    if request.mimetype != "multipart/form-data":
        return []
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


@api.post(
    "/task",
    responses={202: TaskCreated, **ERRORS},
    openapi_extensions=task_request_body(get_settings()),
)
def submit_task() -> Response:
    """Submit a job; answers 202 with the task id and where to poll it."""
    svc = services()
    task_request, files = _parse_request()  # reads the whole body, even for a retry
    fingerprint = request_fingerprint(
        task_request.model_dump(mode="json"),
        [*files, *request.files.getlist("manifest")],
    )
    earlier = earlier_submit(svc, fingerprint)
    if earlier is not None and (existing := svc.store.get(earlier)) is not None:
        return _created_response(earlier, existing.state)  # a retried submit
    if isinstance(task_request, SimilarityRequest):
        _check_model(svc, task_request.params.model, "embed")
        _check_model(svc, task_request.params.detector, "detect")
    elif isinstance(task_request, TaskRequest):
        _check_model(svc, task_request.params.model)
    limits = svc.settings.job_limits(task_request.type)
    timeout = task_request.timeout or limits.timeout_default_s
    if timeout > limits.timeout_max_s:
        raise ApiError(
            422,
            "invalid_timeout",
            f"timeout may be at most {limits.timeout_max_s} s for {task_request.type}",
        )
    if isinstance(task_request, SimilarityRequest):
        return _submit_similarity(svc, task_request, files, timeout, fingerprint)
    detect_input = getattr(task_request.input, "image_urls", None) is not None
    urls = task_request.input.image_urls if detect_input else []
    manifest_urls = task_request.input.all_manifest_urls() if detect_input else []
    manifest_files = _read_manifest_uploads()
    needs_input = getattr(job_module(task_request.type), "NEEDS_INPUT", True)
    if needs_input and not urls and not files and not manifest_urls and not manifest_files:
        raise ApiError(
            422,
            "no_input",
            "give input.image_urls or input.manifest_url(s), or upload 'images' or a 'manifest'",
        )
    if len(manifest_urls) + len(manifest_files) > svc.settings.iiif.max_manifests:
        raise ApiError(
            422,
            "too_many_manifests",
            f"at most {svc.settings.iiif.max_manifests} manifests per task",
        )
    if len(urls) + len(files) > limits.max_images:
        raise ApiError(
            422,
            "too_many_images",
            f"at most {limits.max_images} images per {task_request.type} task",
        )
    check_backpressure(svc)
    uploaded = _read_uploads(files)

    task_id = uuid.uuid4().hex
    concurrent = claim_idempotency(svc, task_id, fingerprint)
    if concurrent is not None:  # the same submit, racing: one task for both
        return _created_response(concurrent, State.QUEUED)
    inputs: list[dict[str, Any]] = [{"url": url} for url in urls]
    for index, (filename, suffix, data) in enumerate(uploaded, start=len(inputs)):
        path = uploads.save(svc.settings.uploads_dir, task_id, index, suffix, data)
        inputs.append({"upload": str(path), "filename": filename})
    images = len(inputs)  # the worker adds the canvases of the manifests once it has read them
    inputs.extend({"manifest_url": url} for url in manifest_urls)
    for index, (filename, data) in enumerate(manifest_files, start=len(inputs)):
        path = uploads.save(svc.settings.uploads_dir, task_id, index, ".json", data)
        inputs.append({"manifest_upload": str(path), "filename": filename})
    spec = {"params": task_request.params.model_dump(), "inputs": inputs}
    return _enqueue(svc, task_id, task_request.type, spec, images, timeout)


def _submit_similarity(
    svc: Services,
    task_request: SimilarityRequest,
    files: list[FileStorage],
    timeout: float,
    fingerprint: str,
) -> Response:
    """A similarity task names documents (manifest URLs) only: checked here, read by the worker
    (a URL that turns out not to be a manifest fails the task with `manifest_invalid`)."""
    documents = task_request.input.documents
    if files or _read_manifest_uploads():
        raise ApiError(
            422, "invalid_request", "a similarity task compares manifest URLs: upload nothing"
        )
    if len(documents) > svc.settings.similarity.max_documents:
        raise ApiError(
            422,
            "too_many_documents",
            f"at most {svc.settings.similarity.max_documents} documents per similarity task",
        )
    check_backpressure(svc)
    task_id = uuid.uuid4().hex
    concurrent = claim_idempotency(svc, task_id, fingerprint)
    if concurrent is not None:
        return _created_response(concurrent, State.QUEUED)
    spec = {
        "params": task_request.params.model_dump(),
        "inputs": [{"document": key, "manifest_url": url} for key, url in documents.items()],
    }
    return _enqueue(svc, task_id, task_request.type, spec, 0, timeout)


def _enqueue(
    svc: Services, task_id: str, job_type: str, spec: dict[str, Any], images: int, timeout: float
) -> Response:
    record = svc.store.create(g.owner, job_type, spec, images, timeout, task_id)
    try:
        svc.celery.send_task(
            RUN_JOB,
            args=[task_id],
            task_id=task_id,
            soft_time_limit=timeout,
            time_limit=svc.settings.hard_limit_s(timeout),
        )
    except Exception as exc:
        error = ("queue_unavailable", "could not enqueue")
        end_task(svc.store, svc.settings.uploads_dir, task_id, State.FAILED, error)
        raise ApiError(
            503,
            "queue_unavailable",
            "the task queue is unavailable; retry later",
            {"Retry-After": "5"},
        ) from exc
    return _created_response(task_id, record.state)


def _created_response(task_id: str, state: State) -> Response:
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


WITH_ITEMS = (State.SUCCEEDED, State.TIMED_OUT, State.CANCELLED)  # states that show a result


def _owned_record(svc: Services, task_id: str) -> TaskRecord:
    """The caller's task; another key's task is indistinguishable from an unknown one."""
    well_formed = re.fullmatch(TASK_ID_PATTERN, task_id) is not None
    return _check_owner(svc, task_id, svc.store.get(task_id) if well_formed else None)


def _owned_snapshot(svc: Services, task_id: str) -> tuple[TaskRecord, list[dict] | None]:
    """The caller's task and, once it has ended, its items: one Redis round trip."""
    well_formed = re.fullmatch(TASK_ID_PATTERN, task_id) is not None
    record, items = svc.store.snapshot(task_id, WITH_ITEMS) if well_formed else (None, None)
    return _check_owner(svc, task_id, record), items


def _check_owner(svc: Services, task_id: str, record: TaskRecord | None) -> TaskRecord:
    well_formed = re.fullmatch(TASK_ID_PATTERN, task_id) is not None
    if record is not None and (record.owner == g.owner or is_admin()):
        return record
    if record is None and well_formed and svc.store.expired_owner(task_id) == g.owner:
        raise ApiError(410, "expired", "this task's result has expired and was deleted")
    raise ApiError(404, "not_found", "no such task")


def _status_body(svc: Services, record: TaskRecord, items: list[dict] | None = None) -> TaskStatus:
    result = None
    if record.state in WITH_ITEMS:
        items = svc.store.items(record.id) if items is None else items
        items = sorted(items, key=lambda item: item["index"])
        result = TaskResult(items=items, provenance=record.provenance, **(record.summary or {}))
    position = eta = None
    if record.state == State.QUEUED:
        rank = svc.store.queue_position(record.id)
        position = None if rank is None else rank + 1
        mean = svc.store.mean_duration_s()
        if position is not None and mean is not None:
            eta = round(mean * position / max(1, svc.settings.worker.concurrency), 1)
    error = None
    if record.error_code:
        error = {"code": record.error_code, "message": record.error_message or ""}
    return TaskStatus(
        task_id=record.id,
        type=record.type,
        state=record.state,
        progress=Progress(done=record.done, total=record.total, failed=record.failed),
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        expires_at=timestamp(record.expires_at),
        result=result,
        error=error,
        queue_position=position,
        eta_s=eta,
    )


def _status_response(body: TaskStatus, status: int | None = None) -> Response:
    response = jsonify(body.model_dump(mode="json", exclude_none=False))
    active = not body.state.terminal
    response.status_code = status or (202 if active else 200)
    if active:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


@api.get("/status/<task_id>", responses={200: TaskStatus, 202: TaskStatus, **ERRORS})
def task_status(path: TaskPath) -> Response:
    """State, progress and (when finished) result of a task: 202 while active, 200 when done."""
    svc = services()
    record, items = _owned_snapshot(svc, path.task_id)
    return _status_response(_status_body(svc, record, items))


@api.delete("/terminate/<task_id>", responses={200: TaskStatus, 202: TaskStatus, **ERRORS})
def terminate_task(path: TaskPath) -> Response:
    """Stop a task: 202 while it is being cancelled, 200 (unchanged) if it had already ended."""
    svc = services()
    record = _owned_record(svc, path.task_id)
    if record.state.terminal:
        return _status_response(_status_body(svc, record), 200)
    previous = svc.store.request_cancel(record.id)
    if previous == State.QUEUED:
        uploads.discard(svc.settings.uploads_dir, record.id)
    latest = svc.store.get(record.id) or record
    return _status_response(_status_body(svc, latest), 202)

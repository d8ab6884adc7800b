"""GET /result/<id>?format=json|iiif|yolo: a finished task's result as a file to keep or to open
in a IIIF viewer. Same key, ownership and expiry rules as /status (404 for another key's task,
410 once expired); 202 + Retry-After while the task is still running."""

from __future__ import annotations

import json
from typing import Literal

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from model.api.auth import SECURITY, require_key
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse
from model.api.schemas import TaskPath
from model.api.services import services
from model.api.tasks import ERRORS, RETRY_AFTER_S, _owned_record
from model.outputs.annotations import annotation_page
from model.outputs.result_json import result_document
from model.outputs.yolo import yolo_archive
from model.store import State

api = APIBlueprint(
    "results",
    __name__,
    abp_tags=[Tag(name="tasks")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(require_key)

WITH_RESULT = (State.SUCCEEDED, State.TIMED_OUT, State.CANCELLED)


class ResultQuery(BaseModel):
    format: Literal["json", "iiif", "yolo"] = Field(
        "json",
        description="json: items + provenance; iiif: W3C/IIIF annotations (AnnotationPage, or "
        "a v2 AnnotationList for 2.x manifests); yolo: zip of YOLO txt files",
    )
    manifest: int | None = Field(
        None, ge=0, description="iiif: which manifest (index in provenance.manifests)"
    )


@api.get("/result/<task_id>", responses={200: None, 202: None, 409: ErrorResponse, **ERRORS})
def task_result(path: TaskPath, query: ResultQuery) -> Response:
    """A finished task's result as JSON, IIIF annotations or a zip of YOLO label files."""
    svc = services()
    record = _owned_record(svc, path.task_id)
    if not record.state.terminal:
        response = jsonify({"task_id": record.id, "state": record.state.value})
        response.status_code = 202
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    if record.state not in WITH_RESULT:
        raise ApiError(
            409,
            "no_result",
            f"task {record.state.value.lower()}: {record.error_code}: {record.error_message}",
        )
    items = svc.store.items(record.id)
    provenance = svc.store.full_provenance(record) or {}
    if query.format == "yolo":
        data = yolo_archive(items, provenance.get("classes", []), provenance.get("manifests", []))
        return Response(
            data,
            mimetype="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{record.id}-yolo.zip"'},
        )
    if query.format == "iiif":
        base = f"{svc.settings.http.public_base_url()}/result/{record.id}"
        return _iiif_response(base, items, provenance.get("manifests", []), query.manifest)
    error = {"code": record.error_code, "message": record.error_message or ""}
    body = result_document(
        record.id,
        record.state.value,
        items,
        provenance or None,
        error if record.error_code else None,
    )
    body.update(record.summary or {})  # similarity: the compared pairs
    return jsonify(body)


def _iiif_response(
    base: str, items: list[dict], manifests: list[dict], which: int | None
) -> Response:
    if not manifests:
        # The task exists but has no such form: a conflict with its inputs, not a bad request.
        raise ApiError(409, "no_iiif_input", "this task read no IIIF manifest; use format=json")
    if which is not None and which >= len(manifests):
        raise ApiError(404, "not_found", f"this task read {len(manifests)} manifest(s)")
    pages = [
        annotation_page(m, items, f"{base}?format=iiif&manifest={m['index']}")
        for m in manifests
        if which is None or m["index"] == which
    ]
    # One manifest: the page itself, as viewers load it; several: one page each, in order.
    body = pages[0] if len(pages) == 1 else {"manifests": manifests, "pages": pages}
    mimetype = "application/ld+json" if len(pages) == 1 else "application/json"
    return Response(json.dumps(body), mimetype=mimetype)

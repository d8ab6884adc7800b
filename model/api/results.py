"""A finished task's result, as a file to keep or as documents a IIIF viewer opens:

    GET /result/<id>?format=json|iiif|yolo                       the whole result
    GET /result/<id>?offset=&limit=                             a page of its items (JSON)
    GET /result/<id>/iiif/manifest/<m>                          the source manifest, its analysed
                                                                canvases pointing at their pages
    GET /result/<id>/iiif/manifest/<m>/annotations              every annotation of manifest m
    GET /result/<id>/iiif/manifest/<m>/canvas/<n>/annotations   those of its canvas n

Same key, ownership and expiry rules as /status (404 for another key's task, 410 once expired);
202 + Retry-After while the task is still running. Every route here also opens with a share
link of this task instead of a key (`?token=`, model/api/shares.py): viewers cannot send keys.
The URLs inside the IIIF documents are absolute, from `http.public_url`, and carry that token.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from flask import Response, g, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from model.api.auth import SECURITY
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse
from model.api.schemas import TaskPath
from model.api.services import Services, services
from model.api.shares import authorize_result_read
from model.api.tasks import ERRORS, RETRY_AFTER_S, _owned_record
from model.outputs.annotations import (
    ResultLinks,
    analysed_canvases,
    annotation_page,
    canvas_number,
    viewer_manifest,
)
from model.outputs.cluster import with_links
from model.outputs.redact import shared_view
from model.outputs.result_json import result_document
from model.outputs.vector import svg_archive
from model.outputs.yolo import yolo_archive
from model.tasks.record import TaskRecord
from model.tasks.states import State

api = APIBlueprint(
    "results",
    __name__,
    abp_tags=[Tag(name="tasks")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(authorize_result_read)

WITH_RESULT = (State.SUCCEEDED, State.TIMED_OUT, State.CANCELLED)
IIIF_MIMETYPE = "application/ld+json"
PAGE_ITEMS = 500  # a page of a result's items, unless `limit` says otherwise
MAX_PAGE_ITEMS = 5000
RESPONSES = {200: None, 202: None, 409: ErrorResponse, **ERRORS}


class ShareToken(BaseModel):
    token: str | None = Field(
        None, description="A share link's token, instead of a key (POST /result/<id>/shares)"
    )


class ResultQuery(ShareToken):
    format: Literal["json", "iiif", "yolo", "svg", "html"] = Field(
        "json",
        description="json: items + provenance; iiif: W3C/IIIF annotations (AnnotationPage, or "
        "a v2 AnnotationList for 2.x manifests), for a cluster task a IIIF Collection of its "
        "families; yolo: zip of YOLO txt files; svg (vectorize): zip of one SVG per item, sized "
        "to its image; html: a cluster task's contact sheet",
    )
    manifest: int | None = Field(
        None, ge=0, description="iiif: which manifest (index in provenance.manifests)"
    )
    offset: int | None = Field(
        None,
        ge=0,
        description="json: a page of the items from this position, in the order they were "
        "stored (every item on exactly one page), instead of the whole result; the other "
        "formats ignore it",
    )
    limit: int | None = Field(
        None,
        ge=1,
        le=MAX_PAGE_ITEMS,
        description=f"json: items per page ({PAGE_ITEMS}); the other formats ignore it",
    )


class ManifestPath(TaskPath):
    manifest: int = Field(ge=0, description="Index in provenance.manifests")


class CanvasPath(ManifestPath):
    canvas: int = Field(ge=0, description="The canvas's position in its manifest")


class _Finished:
    """A finished task's items and provenance, and where its IIIF documents live."""

    def __init__(self, svc: Services, record: TaskRecord) -> None:
        self.record = record
        self.items = svc.store.items(record.id)
        self.provenance = svc.store.full_provenance(record) or {}
        self.manifests: list[dict] = self.provenance.get("manifests", [])
        public = svc.settings.http.public_base_url()
        self.links = ResultLinks.of_task(public, record.id, g.get("share_token"))

    def manifest(self, index: int) -> dict:
        if not self.manifests:
            # The task exists but has no such form: a conflict with its inputs, not a bad request.
            raise ApiError(409, "no_iiif_input", "this task read no IIIF manifest; use format=json")
        if index >= len(self.manifests):
            raise ApiError(404, "not_found", f"this task read {len(self.manifests)} manifest(s)")
        return self.manifests[index]


def _finished_record(svc: Services, task_id: str) -> TaskRecord | Response:
    """The finished task, or the 202 to answer while it runs (409 if it ended without a
    result)."""
    record = _owned_record(svc, task_id)
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
    return record


def _finished(svc: Services, task_id: str) -> _Finished | Response:
    """The task's result read whole, or what _finished_record answers instead."""
    record = _finished_record(svc, task_id)
    return record if isinstance(record, Response) else _Finished(svc, record)


def _iiif(document: dict) -> Response:
    return Response(json.dumps(document), mimetype=IIIF_MIMETYPE)


@api.get("/result/<task_id>", responses=RESPONSES)
def task_result(path: TaskPath, query: ResultQuery) -> Response:
    """A finished task's result as JSON, IIIF annotations or a zip of YOLO label files."""
    svc = services()
    paged = query.offset is not None or query.limit is not None
    if paged and query.format == "json":  # the other formats are whole documents
        return _result_page(svc, path.task_id, query.offset or 0, query.limit or PAGE_ITEMS)
    result = _finished(svc, path.task_id)
    if isinstance(result, Response):
        return result
    record, items, provenance = result.record, result.items, result.provenance
    if record.type == "cluster" and query.format in ("html", "iiif"):
        from model.api.cluster_results import cluster_output  # it imports this module

        return cluster_output(result, query.format)
    if query.format == "html":
        raise ApiError(409, "no_html", "format=html is a cluster task's contact sheet")
    if query.format == "yolo":
        data = yolo_archive(items, provenance.get("classes", []), result.manifests)
        return Response(
            data,
            mimetype="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{record.id}-yolo.zip"'},
        )
    if query.format == "svg":
        if record.type != "vectorize":
            raise ApiError(409, "no_vectors", "format=svg is for vectorize tasks")
        return Response(
            svg_archive(items),
            mimetype="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{record.id}-svg.zip"'},
        )
    if query.format == "iiif":
        # Every manifest, or the one asked for; none read: manifest(0) answers the 409.
        which = range(len(result.manifests)) or [0] if query.manifest is None else [query.manifest]
        pages = [annotation_page(result.manifest(m), items, result.links) for m in which]
        if len(pages) == 1:  # the page itself, as viewers load it
            return _iiif(pages[0])
        manifests = _for_viewer(svc, result.manifests)
        return jsonify({"manifests": manifests, "pages": pages})  # one page each, in order
    error = {"code": record.error_code, "message": record.error_message or ""}
    body = result_document(
        record.id,
        record.state.value,
        items,
        provenance or None,
        error if record.error_code else None,
    )
    body.update(record.summary or {})  # similarity: the compared pairs
    if record.type == "cluster" and record.summary:
        body.update(with_links(record.summary, result.links))
    return jsonify(_for_viewer(svc, body))


def _for_viewer(svc: Services, body: Any) -> Any:
    """`body` as the caller may see it: whole for the key, redacted through a share link (the
    service's own links, which carry the link's token, kept)."""
    if not g.get("share_token"):
        return body
    return shared_view(body, svc.settings.http.public_base_url().rstrip("/") + "/")


def _result_page(svc: Services, task_id: str, offset: int, limit: int) -> Response:
    """One page of a finished task's items (as stored, each page sorted by index): a 10,000-page
    result read without holding it whole, in Redis's reply or here. The first page carries the
    provenance; `next_offset` is null on the last."""
    record = _finished_record(svc, task_id)
    if isinstance(record, Response):
        return record
    items, total = svc.store.item_page(record.id, offset, limit)
    after = offset + len(items)
    body = {
        "task_id": record.id,
        "state": record.state.value,
        "complete": record.state == State.SUCCEEDED,
        "offset": offset,
        "limit": limit,
        "items_total": total,
        "next_offset": after if after < total else None,
        "items": sorted(items, key=lambda item: item["index"]),
    }
    if offset == 0:
        body["provenance"] = svc.store.full_provenance(record)
        body["error"] = (
            {"code": record.error_code, "message": record.error_message or ""}
            if record.error_code
            else None
        )
    return jsonify(_for_viewer(svc, body))


@api.get("/result/<task_id>/iiif/manifest/<int:manifest>", responses=RESPONSES)
def viewer_manifest_route(path: ManifestPath, query: ShareToken) -> Response:
    """The manifest the task read, its analysed canvases referencing their annotation pages:
    paste its URL (a share link's) into Mirador to see the detections."""
    svc = services()
    result = _finished(svc, path.task_id)
    if isinstance(result, Response):
        return result
    summary = result.manifest(path.manifest)
    source = svc.store.kept_manifest(result.record.id, path.manifest)
    if source is None:
        max_bytes = svc.settings.iiif.max_kept_manifest_bytes
        raise ApiError(
            404,
            "manifest_not_kept",
            f"this manifest was not kept with the result (over {max_bytes} bytes, or read by an "
            "older release); its annotations are at .../annotations",
        )
    return _iiif(viewer_manifest(json.loads(source), summary, result.items, result.links))


@api.get("/result/<task_id>/iiif/manifest/<int:manifest>/annotations", responses=RESPONSES)
def manifest_annotations(path: ManifestPath, query: ShareToken) -> Response:
    """Every annotation of one manifest: an AnnotationPage (3.0) or sc:AnnotationList (2.x)."""
    result = _finished(services(), path.task_id)
    if isinstance(result, Response):
        return result
    summary = result.manifest(path.manifest)
    return _iiif(annotation_page(summary, result.items, result.links))


@api.get(
    "/result/<task_id>/iiif/manifest/<int:manifest>/canvas/<int:canvas>/annotations",
    responses=RESPONSES,
)
def canvas_annotations(path: CanvasPath, query: ShareToken) -> Response:
    """The annotations of one canvas (its position in the manifest); each annotation's id is
    this page's URL with a fragment."""
    result = _finished(services(), path.task_id)
    if isinstance(result, Response):
        return result
    summary = result.manifest(path.manifest)
    analysed = {canvas_number(i) for i in analysed_canvases(result.items, path.manifest)}
    if path.canvas not in analysed:
        raise ApiError(404, "not_found", "no analysed canvas at that position in this manifest")
    return _iiif(annotation_page(summary, result.items, result.links, canvas=path.canvas))

"""A cluster task's own result routes (same key, share-link and expiry rules as results.py):

GET /result/<id>?format=html                      contact sheet (cluster_output)
GET /result/<id>?format=iiif                      IIIF Collection, one Manifest per family
GET /result/<id>/clusters/<n>/prototype.png       family n's prototype
GET /result/<id>/clusters/<n>/manifest            family n as a IIIF Manifest
"""

from __future__ import annotations

import json

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from pydantic import Field

from model.api.auth import SECURITY
from model.api.errors import COMMON_RESPONSES, ApiError
from model.api.results import IIIF_MIMETYPE, RESPONSES, ShareToken, _Finished, _finished
from model.api.schemas import TaskPath
from model.api.services import services
from model.api.shares import authorize_result_read
from model.outputs.cluster import (
    CONTENT_SECURITY_POLICY,
    cluster_manifest,
    collection,
    contact_sheet,
    with_links,
)

api = APIBlueprint(
    "cluster_results",
    __name__,
    abp_tags=[Tag(name="tasks")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(authorize_result_read)


class ClusterPath(TaskPath):
    cluster: int = Field(ge=0, description="The family's id (result.clusters[].id)")


def _summary(result: _Finished) -> dict:
    if result.record.type != "cluster":
        raise ApiError(409, "not_a_cluster_task", "this task is not a cluster task")
    return result.record.summary or {}


def _cluster(result: _Finished, number: int) -> dict:
    clusters = _summary(result).get("clusters", [])
    found = next((c for c in clusters if c["id"] == number), None)
    if found is None:
        raise ApiError(404, "not_found", f"this task has {len(clusters)} families")
    return found


def cluster_output(result: _Finished, fmt: str) -> Response:
    summary = _summary(result)
    if fmt == "html":
        page = contact_sheet(result.record.id, summary, result.links)
        headers = {
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }
        return Response(page, mimetype="text/html", headers=headers)
    document = collection(result.record.id, with_links(summary, result.links), result.links)
    return Response(json.dumps(document), mimetype=IIIF_MIMETYPE)


@api.get("/result/<task_id>/clusters/<int:cluster>/prototype.png", responses=RESPONSES)
def prototype_png(path: ClusterPath, query: ShareToken) -> Response:
    """A family's prototype: its members aligned onto its medoid and averaged (PNG)."""
    svc = services()
    result = _finished(svc, path.task_id)
    if isinstance(result, Response):
        return result
    _cluster(result, path.cluster)
    data = svc.store.kept_file(result.record.id, f"prototype-{path.cluster}.png")
    if data is None:
        raise ApiError(404, "not_found", "this family's prototype is not kept")
    return Response(data, mimetype="image/png", headers={"Cache-Control": "private, max-age=3600"})


@api.get("/result/<task_id>/clusters/<int:cluster>/manifest", responses=RESPONSES)
def family_manifest(path: ClusterPath, query: ShareToken) -> Response:
    """A family as a IIIF Presentation 3 Manifest: one canvas per member."""
    result = _finished(services(), path.task_id)
    if isinstance(result, Response):
        return result
    cluster = _cluster(result, path.cluster)
    items = {item["index"]: item for item in result.items}
    return Response(
        json.dumps(cluster_manifest(cluster, items, result.links)), mimetype=IIIF_MIMETYPE
    )

"""A detect task's inputs as units of work, one per result item: image URLs and uploads first
(in the order given), then the canvases of every manifest (manifest URLs, then uploads).

The numbering is deterministic, so a task redelivered after a crash plans the same units and
resumes after the items already stored (JobContext.finished_indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.iiif.loader import (
    CanvasTask,
    Limits,
    ManifestError,
    ManifestSummary,
    json_getter,
    limit_warnings,
    load,
    parse_json,
)
from model.jobs import JobFailed, UploadMissing
from model.jobs.contract import ImageUpload, ImageUrl, ManifestUpload, ManifestUrl, TaskSpec


@dataclass(frozen=True)
class WorkUnit:
    index: int
    source: str  # what the item is reported as: URL, upload:<name>, or the canvas id
    url: str | None = None
    upload: ImageUpload | None = None  # read from the task's uploads (model/uploads.py)
    canvas: CanvasTask | None = None


@dataclass
class Plan:
    units: list[WorkUnit]
    manifests: list[ManifestSummary] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    problems_count: int = 0  # problems listed and not (model/iiif/loader.py: MAX_LISTED)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # limits that cut the task


def _uploaded_manifest(entry: ManifestUpload, uploads: Any) -> tuple[str, Any]:
    name = entry.filename or "manifest.json"
    try:
        return name, parse_json(uploads.read(entry))
    except UploadMissing as exc:
        raise JobFailed(exc.code, exc.message) from exc
    except ValueError as exc:
        raise JobFailed(
            "manifest_invalid", f"uploaded manifest {name!r} is not readable JSON"
        ) from exc


def plan_units(spec: TaskSpec, fetcher: Any, settings: Any, uploads: Any = None) -> Plan:
    """`uploads` (model.uploads.UploadStore) reads uploaded manifests."""
    units: list[WorkUnit] = []
    for entry in spec.of_kind(ImageUrl, ImageUpload):
        if isinstance(entry, ImageUrl):
            units.append(WorkUnit(len(units), entry.url, url=entry.url))
        else:
            units.append(WorkUnit(len(units), f"upload:{entry.filename}", upload=entry))
    urls = [entry.url for entry in spec.of_kind(ManifestUrl)]
    manifests = [_uploaded_manifest(entry, uploads) for entry in spec.of_kind(ManifestUpload)]
    if not urls and not manifests:
        return Plan(units)
    limits = Limits(
        max_depth=settings.iiif.max_collection_depth,
        max_canvases=settings.iiif.max_canvases,
        max_documents=settings.iiif.max_manifests,
    )
    try:
        loaded = load(urls, manifests, json_getter(fetcher, settings.iiif.max_json_bytes), limits)
    except ManifestError as exc:
        raise JobFailed(exc.code, exc.message) from exc
    if not loaded.canvases and not units:
        skipped = sum(m.skipped_count for m in loaded.manifests)
        raise JobFailed(
            "no_images", f"the manifests have no canvas with an image ({skipped} canvases skipped)"
        )
    for task in loaded.canvases:
        units.append(WorkUnit(len(units), task.canvas.id, canvas=task))
    warnings = limit_warnings(loaded, limits)
    return Plan(units, loaded.manifests, loaded.problems, loaded.problems_count, warnings)

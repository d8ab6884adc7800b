"""A similarity task's documents as units of work: one per canvas, numbered across documents in
the order the task names them, each knowing its document. Deterministic, so a redelivered task
plans the same units and resumes after the pages it already stored.

Each document is read on its own (a manifest or a collection), within what is left of the
task's limits (`iiif.max_canvases` canvases, `iiif.max_manifests` documents fetched), so a
collection in one document cannot be mistaken for another document's manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.iiif.loader import (
    Limits,
    ManifestError,
    ManifestSummary,
    json_getter,
    limit_warnings,
    load,
)
from model.jobs import JobFailed
from model.jobs.units import WorkUnit


@dataclass
class DocumentPlan:
    units: list[WorkUnit] = field(default_factory=list)
    document_of: list[str] = field(default_factory=list)  # unit index -> document key
    manifests: list[ManifestSummary] = field(default_factory=list)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # limits that cut a document


def plan_documents(documents: list[tuple[str, str]], fetcher: Any, settings: Any) -> DocumentPlan:
    plan = DocumentPlan()
    get_json = json_getter(fetcher, settings.iiif.max_json_bytes)
    canvases_left = settings.iiif.max_canvases
    fetches_left = settings.iiif.max_manifests
    for key, url in documents:
        limits = Limits(
            max_depth=settings.iiif.max_collection_depth,
            max_canvases=canvases_left,
            max_documents=max(1, fetches_left),
        )
        try:
            loaded = load([url], [], get_json, limits)
        except ManifestError as exc:
            raise JobFailed(exc.code, f"document {key!r}: {exc.message}") from exc
        if not loaded.canvases and canvases_left > 0:
            skipped = sum(m.skipped_count for m in loaded.manifests)
            raise JobFailed(
                "no_images",
                f"document {key!r} has no canvas with an image ({skipped} canvases skipped)",
            )
        first = len(plan.units)
        for summary in loaded.manifests:
            summary.index = len(plan.manifests)  # numbered across the whole task
            plan.manifests.append(summary)
        for task in loaded.canvases:
            plan.units.append(WorkUnit(len(plan.units), task.canvas.id, canvas=task))
            plan.document_of.append(key)
        plan.problems.extend({"document": key, **p} for p in loaded.problems)
        plan.warnings.extend({"document": key, **w} for w in limit_warnings(loaded, limits))
        plan.documents[key] = {
            "source": url,
            "manifests": [m.index for m in loaded.manifests],
            "label": loaded.manifests[0].label if loaded.manifests else "",
            "pages": len(plan.units) - first,
        }
        canvases_left -= len(loaded.canvases)
        fetches_left -= max(1, len(loaded.manifests))
    return plan

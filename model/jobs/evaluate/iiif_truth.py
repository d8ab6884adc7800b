"""Ground truth given as IIIF, gathered in the worker for evaluate and train alike: the
annotations from every place a request may put them (inline, by URL, embedded in or referenced
by the manifest, each list fetched through the task's fetcher), matched to the manifest's
canvases. One reader (groundtruth.parse) for both jobs."""

from __future__ import annotations

from typing import Any

from model.iiif.loader import json_getter
from model.jobs import JobFailed
from model.jobs.contract import Annotations, AnnotationUrl
from model.jobs.evaluate.groundtruth import Parsed, TruthBox, annotation_references, parse
from model.jobs.units import Plan

MAX_ANNOTATION_URLS = 200


def gather(ctx: Any, plan: Plan, fetcher: Any) -> Parsed:
    """Every annotation of the task: a list that cannot be read is a problem, not a failure."""
    parsed = Parsed()
    for entry in ctx.spec.of_kind(Annotations):
        parse(entry.documents, parsed)
    urls = [e.url for e in ctx.spec.of_kind(AnnotationUrl)]
    for manifest in plan.manifests:
        if isinstance(manifest.document, dict):
            embedded, referenced = annotation_references(manifest.document)
            parse(embedded, parsed)
            urls += referenced
    get = json_getter(fetcher, ctx.resources.settings.iiif.max_json_bytes)
    for url in list(dict.fromkeys(urls))[:MAX_ANNOTATION_URLS]:
        ctx.check_cancel()
        try:
            parse([get(url)], parsed)
        except Exception as exc:  # noqa: BLE001 - one unreadable list is reported, not fatal
            parsed.problem("annotations_unreadable", f"{url}: {type(exc).__name__}: {exc}")
    return parsed


def on_canvases(parsed: Parsed, plan: Plan) -> tuple[dict[str, list[TruthBox]], list[dict]]:
    """The boxes of each canvas, and the problems (annotations on canvases the manifest does
    not have among them); no box on any of its canvases fails the task (`no_ground_truth`)."""
    truths = parsed.by_canvas()
    known = {u.canvas.canvas.id for u in plan.units if u.canvas is not None}
    problems = list(parsed.problems)
    unknown = sorted(set(truths) - known)
    if unknown:
        problems.append(
            {
                "code": "unknown_canvas",
                "message": f"{len(unknown)} canvas(es) annotated but not in the manifest, e.g. "
                f"{unknown[0]}",
            }
        )
    if not set(truths) & known:
        raise JobFailed(
            "no_ground_truth",
            "no annotation box on any canvas of the manifest"
            + (f": {problems[0]['message']}" if problems else ""),
        )
    return truths, problems

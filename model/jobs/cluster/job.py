"""The cluster job in the worker.

Stages, and what survives an interruption:
1. Items (progress counts them): each image URL, each uploaded image (read from the task's
   uploads, model/uploads.py), and each illustration of the detect tasks
   named (cut through the page's IIIF image service where there is one, else from the page
   image). Each is fetched (the safe fetcher: timeout, size cap, SSRF guard), described
   (method.item_features) and embedded in batches; each becomes a result item as it is done,
   a failed one with its reason. A timeout or cancel here keeps those items; the result's
   `clustering.state` says clustering was not reached.
2. Clustering: shortlist, verification, families (method.py); then one prototype PNG per
   family (prototype.py), kept with the result. `clustering.state` is then "done".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
from PIL import Image

from model.inference.provenance import model_provenance
from model.jobs import JobFailed, UploadMissing
from model.jobs.cluster import (
    SPEC,
    ClusterItem,
    ClusterParams,
    method,
    prototype,
    verify,
    words,
)
from model.jobs.context import JobContext
from model.jobs.contract import ImageUpload, ImageUrl, ManifestUrl, SourceTask, TaskSpec
from model.jobs.crops import CropsParams, crops_of, detect_pages
from model.jobs.items import DetectPage
from model.jobs.loading import Prepared, to_output_box
from model.jobs.pages import Pages, open_pages
from model.jobs.similarity.job import embedder_named
from model.pipeline.cache import DetectionCache
from model.pipeline.memory import process_budget
from model.sources.fetch import FetchError
from model.sources.images import ImageDecodeError, decode_within

EMBED_BATCH = 8  # small: items show as done soon after they load
DETECT_IOU = 0.45  # the detector's NMS threshold (detect's default)
FLUSH_S = 1.0  # ...and no item waits longer than this for its batch (slow hosts)
MAX_SIDE = 1024  # an item is decoded with its long side at most this (it is analysed at 256)
MIN_SIDE = 8
METHOD = {
    "features": "similarity's region features (RootSIFT, layout thumbnail) + the feature "
    "extractor's pooled vector, upright and mirrored",
    "shortlist": "each item's `neighbours` nearest items: mean of the best layout cosine over "
    f"turns {list(method.TURNS)} and mirror, the embedding cosine and the cosine of bags of "
    f"words (RootSIFT hashed by {words.TABLES} x {words.BITS} centred random projections, "
    "tf-idf; upright or mirrored) (past "
    f"{method.EXACT_ITEMS} items, candidates from {method.PROJECTED}-dimension projections "
    "first)",
    "verification": "similarity's RANSAC similarity transform + photometric correlation, "
    "direct or mirrored, on the strongest keypoints after a prescreen, every shortlisted "
    f"pair ({verify.ROUND} items at a time); the score "
    "(0-1) is the edge's weight; on the worker's inference threads",
    "embedding edges": "a shortlisted pair no verified edge links at the threshold is linked "
    "at the threshold when its embeddings' cosine reaches the model card's `link_cosine` "
    "(none without one)",
    "families": "edges of at least `threshold` taken strongest first (embedding edges last, "
    "by cosine), each joining two groups only where the edges between them reach "
    f"{method.DENSITY} x the smaller size x the larger (counted up to `neighbours`); a lone "
    f"item with no verified edge to the group needs {method.LONE} x the group's size (up to "
    "`neighbours`) in embedding edges; groups under `min_cluster_size` unclustered; with "
    "`clusters`, merging stops at that many families (or where the join rule stops it)",
    "prototype": "members aligned onto the medoid by their RANSAC transform and averaged; a "
    "member's score is its correlation with the prototype",
}


@dataclass
class Planned:
    """One item to fetch: `url` (an image, a region of one, or a page to cut `box` from), or
    `upload` (then `url` is upload:<name>, what the item reports as its source)."""

    index: int
    url: str
    describe: dict[str, Any]  # what the result says of where it comes from
    box: tuple[float, float, float, float] | None = None  # x, y, w, h in the page's pixels
    page_size: tuple[int, int] | None = None  # the page's size `box` is measured in
    # A region URL the service refused (a level-0 service cuts nothing): the page and the box
    fallback: Planned | None = None
    image: Image.Image | None = None  # manifest_urls: cut from the page already
    upload: ImageUpload | None = None


@dataclass
class _Run:
    ctx: JobContext
    params: ClusterParams
    embedder: Any
    pages: Pages
    items: dict[int, method.ClusterItem] = field(default_factory=dict)
    pending: list[tuple[Planned, Image.Image]] = field(default_factory=list)
    pending_since: float = 0.0
    page: tuple[str, Image.Image] | None = None  # the last page image fetched, to cut from


def plan(ctx: JobContext, params: ClusterParams) -> list[Planned]:
    """Every item, numbered: image URLs first, uploads, then each detect task's illustrations."""
    planned: list[Planned] = []
    for entry in ctx.spec.of_kind(ImageUrl):
        planned.append(Planned(len(planned), entry.url, {"image_url": entry.url}))
    for upload in ctx.spec.of_kind(ImageUpload):
        planned.append(Planned(len(planned), f"upload:{upload.filename}", {}, upload=upload))
    crop_params = CropsParams(min_confidence=params.min_confidence)
    for source in ctx.spec.of_kind(SourceTask):
        for page in detect_pages(ctx, source.task_id)[0]:
            if page.status != "ok":
                continue
            crops = crops_of(page, crop_params).crops
            kept = [d for d in page.detections if d.confidence >= params.min_confidence]
            for detection, crop in zip(kept, crops, strict=True):
                where = {
                    "task_id": source.task_id,
                    "page_index": page.index,
                    "canvas_id": page.canvas_id,
                    "manifest": page.manifest,
                    "page_url": page.source,
                    "xywh": detection.xywh,
                    "coordinates": "canvas" if page.canvas_id else "image",
                    "label": detection.label,
                    "confidence": detection.confidence,
                    "region_url": crop.region_url,
                }
                size = (page.canvas_width or page.width, page.canvas_height or page.height)
                page_url = page.image_url or page.source
                cut = Planned(len(planned), page_url, where, tuple(detection.xywh), size)
                if crop.region_url:
                    planned.append(Planned(len(planned), crop.region_url, where, fallback=cut))
                else:
                    planned.append(cut)
    return planned


def _load(run: _Run, planned: Planned) -> Image.Image:
    if planned.image is not None:
        image, planned.image = planned.image, None
        return image
    settings = run.ctx.resources.settings
    if planned.box is not None and run.page is not None and run.page[0] == planned.url:
        image = run.page[1]
    else:
        resources = run.ctx.resources
        if planned.upload is not None:
            data = resources.uploads.read(planned.upload)
        else:
            data = resources.fetcher.get(planned.url).content
        # Every image through the one safe decoder: the pixel limit, the process's budget
        side = None if planned.box is not None else MAX_SIDE
        image, _, _ = decode_within(data, settings.fetch.max_pixels, side, process_budget())
        if planned.box is not None:
            run.page = (planned.url, image)
    if planned.box is None:
        return image
    x, y, w, h = planned.box
    base_w, base_h = planned.page_size or image.size
    sx, sy = image.width / (base_w or image.width), image.height / (base_h or image.height)
    crop = image.crop((round(x * sx), round(y * sy), round((x + w) * sx), round((y + h) * sy)))
    crop.thumbnail((MAX_SIDE, MAX_SIDE))
    return crop


def _flush(run: _Run) -> None:
    """Embed the pending items, emit them."""
    if not run.pending:
        return
    finished = run.ctx.finished_indices()
    vectors = run.embedder.embed([image for _, image in run.pending])
    for (planned, image), vector in zip(run.pending, vectors, strict=True):
        item = method.item_features(planned.index, image)
        method.set_embedding(item, vector)
        run.items[planned.index] = item
        if planned.index not in finished:
            item = {"index": planned.index, "source": planned.url, "status": "ok"}
            item.update(planned.describe, width=image.width, height=image.height)
            run.ctx.emit(ClusterItem.model_validate(item))
    run.pending = []


def _take(run: _Run, planned: Planned, finished: set[int]) -> None:
    """Load one item and queue it for embedding (a failed one is emitted with its reason)."""
    run.ctx.check_cancel()
    try:
        try:
            image = _load(run, planned)
        except FetchError:
            if planned.fallback is None:
                raise
            # The service would not cut the region (level 0): cut it from the page.
            planned.describe["region_url"] = None
            planned.fallback.describe = planned.describe
            image = _load(run, planned.fallback)
        if min(image.size) < MIN_SIDE:
            raise ImageDecodeError("too_small", f"{image.width}x{image.height} px")
    except (FetchError, ImageDecodeError, UploadMissing) as exc:
        _failed(run, planned.index, planned.url, planned.describe, (exc.code, exc.message))
        return
    if not run.pending:
        run.pending_since = time.monotonic()
    run.pending.append((planned, image.convert("RGB")))
    if len(run.pending) >= EMBED_BATCH or time.monotonic() - run.pending_since > FLUSH_S:
        _flush(run)


def _failed(
    run: _Run, index: int, source: str, described: dict[str, Any], error: tuple[str, str]
) -> None:
    if index not in run.ctx.finished_indices():
        item = {"index": index, "source": source, "status": "failed", **described}
        item["error"] = {"code": error[0], "message": error[1]}
        run.ctx.emit(ClusterItem.model_validate(item), failed=True)


def _features(run: _Run, planned_items: list[Planned]) -> None:
    finished = run.ctx.finished_indices()
    for planned in list(planned_items):
        _take(run, planned, finished)
    _detected(run, planned_items, finished)
    _flush(run)
    run.page = None


def _detected(run: _Run, planned: list[Planned], finished: set[int]) -> None:
    """manifest_urls: each canvas's image fetched as detect does (size negotiation, prefetch
    threads, safe fetcher), the detector run on it, each illustration cut from the page and
    taken as an item (numbered after the other inputs, in canvas order)."""
    ctx, params = run.ctx, run.params
    manifests = ctx.spec.of_kind(ManifestUrl)
    if not manifests:
        return
    resources, settings = ctx.resources, ctx.resources.settings
    name = params.detector or resources.default_model
    detector = resources.detectors.get(name)
    if detector is None:
        raise JobFailed("model_unavailable", f"detector {name!r} is not loaded")
    # Items number the manifests' pages after the other inputs: no manifest list in provenance.
    pages = run.pages.plan_task(TaskSpec(inputs=manifests), record=False)
    most = SPEC.limits_in(settings).max_images
    loader = run.pages.loader(
        cache=DetectionCache(None, 0, 0),  # items are cut from the pixels: nothing to reuse
        params_key="-",
        max_side=MAX_SIDE,
        min_side=min(MAX_SIDE, detector.imgsz),
    )
    with run.pages.batches(pages.units, loader) as batches:
        for batch in batches:
            loaded = [p for p in batch if p.error is None and p.image is not None]
            for page in batch:
                if page.error is not None:
                    where = {k: page.item.get(k) for k in ("canvas_id", "manifest", "source")}
                    _failed(run, len(planned), page.unit.source, where, page.error)
                    planned.append(Planned(len(planned), page.unit.source, where))
            found = detector.predict([p.image for p in loaded], params.confidence, DETECT_IOU)
            for page, detections in zip(loaded, found, strict=True):
                for crop in _cut(page, detections, len(planned)):
                    if len(planned) >= most:
                        raise JobFailed("too_many_items", f"more than {most} items")
                    planned.append(crop)
                    ctx.set_total(len(planned))
                    _take(run, crop, finished)
                page.image = None
    ctx.set_total(len(planned))


def _cut(page: Prepared, detections: list[dict[str, Any]], start: int) -> list[Planned]:
    """The page's detected illustrations as items: the pixels cut from the analysed page,
    the box in canvas coordinates, the region URL where the page came from an image service."""
    assert page.image is not None
    boxes = [[v / page.scale for v in d["xyxy"]] for d in detections]
    described = [
        {"xywh": to_output_box(page, box), "label": d["label"], "confidence": d["confidence"]}
        for d, box in zip(detections, boxes, strict=True)
    ]
    found = DetectPage.model_validate({**page.item, "status": "ok", "detections": described})
    regions = crops_of(found, CropsParams())
    out = []
    for n, (d, crop, region) in enumerate(zip(detections, described, regions.crops, strict=True)):
        x1, y1, x2, y2 = (round(v) for v in d["xyxy"])
        where = {
            "canvas_id": page.item.get("canvas_id"),
            "manifest": page.item.get("manifest"),
            "page_url": page.item.get("source"),
            "xywh": crop["xywh"],
            "coordinates": "canvas" if page.unit.canvas is not None else "image",
            "label": crop["label"],
            "confidence": round(float(crop["confidence"]), 4),
            "region_url": region.region_url,
        }
        image = page.image.crop((x1, y1, x2, y2))
        url = region.region_url or page.item.get("source") or ""
        out.append(Planned(start + n, url, where, image=image))
    return out


def _summary(state: str, **extra: Any) -> dict[str, Any]:
    return {"clusters": [], "unclustered": [], "clustering": {"state": state, **extra}}


def _where(planned: Planned) -> dict[str, Any]:
    """How a member (or an unclustered item) is found again: its result item's index and
    source (an upload has no URL), and where it comes from."""
    return {"index": planned.index, "source": planned.url, **planned.describe}


def run_cluster(ctx: JobContext, params: ClusterParams) -> None:
    resources = ctx.resources
    settings = resources.settings
    # The model submit checked and routed the task for (the job's own default if none)
    embedder = embedder_named(resources, SPEC.models_of(params.model_dump())["model"])
    provenance: dict[str, Any] = {
        "method": METHOD,
        "method_version": method.VERSION,
        "embedder": {**model_provenance(embedder), "dim": embedder.dim},
        "params": params.model_dump(),
        "worker": settings.worker_name,
        "worker_pid": os.getpid(),
        "versions": {**resources.versions, "opencv": cv2.__version__},
        "stage": "planning",
    }
    ctx.set_provenance(provenance)
    planned = plan(ctx, params)
    most = SPEC.limits_in(settings).max_images
    if len(planned) > most:
        raise JobFailed("too_many_items", f"{len(planned)} items; at most {most} per task")
    if len(planned) < 2 and not ctx.spec.of_kind(ManifestUrl):  # those are found later
        raise JobFailed("too_few_items", f"{len(planned)} item(s) to cluster; at least 2")
    ctx.set_total(len(planned))
    ctx.set_summary(
        _summary(
            "not reached",
            message="items are being fetched and embedded; clustering follows (a timeout or "
            "cancel before it keeps the embedded items, with no families)",
        )
    )
    provenance["stage"] = "items"
    ctx.set_provenance(provenance)
    with open_pages(ctx, provenance) as pages:
        run = _Run(ctx, params, embedder, pages)
        timings = pages.timings
        started = time.perf_counter()
        _features(run, planned)
        timings["items_s"] = time.perf_counter() - started
        provenance["stage"] = "clustering"
        ctx.set_provenance(provenance)
        ctx.set_summary(
            _summary(
                "running",
                items=len(run.items),
                message="every item is embedded; families are being formed (a timeout or "
                "cancel now keeps the items, with no families)",
            )
        )
        _cluster(run, planned, timings)
        provenance["stage"] = "done"


def _cluster(run: _Run, planned: list[Planned], timings: dict[str, float]) -> None:
    ctx, params = run.ctx, run.params
    order = sorted(run.items)
    items = [run.items[i] for i in order]
    if len(items) < 2:
        ctx.set_summary(_summary("skipped", message=f"{len(items)} item(s) loaded; at least 2"))
        return
    t0 = time.perf_counter()
    found = method.cluster(
        items,
        params.neighbours,
        params.threshold,
        params.min_cluster_size,
        params.clusters,
        # A model card calibrated for it (motif-embed) also links pairs on the embedding alone
        run.embedder.info.options.get("link_cosine"),
        ctx.check_cancel,
        # The process's share of the cores, as inference gets (other tasks run beside it)
        ctx.resources.settings.inference_threads(),
    )
    labels, edges = found.labels, found.edges
    timings["clustering_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clusters = []
    for number in range(int(labels.max(initial=-1)) + 1):
        ctx.check_cancel()
        members = [int(p) for p in (labels == number).nonzero()[0]]
        proto = prototype.build(items, members, edges)
        ctx.keep_file(f"prototype-{number}.png", proto.png)
        described = [
            {**_where(planned[order[p]]), "score": score}
            for p, score in zip(members, proto.scores, strict=True)
        ]
        described.sort(key=lambda m: -m["score"])
        clusters.append(
            {
                "id": number,
                "size": len(members),
                "cohesion": round(proto.cohesion, 4),
                "medoid": order[members[proto.medoid]],
                "aligned": proto.aligned,
                "members": described,
            }
        )
    timings["prototypes_s"] = time.perf_counter() - t0
    unclustered = [_where(planned[order[p]]) for p in (labels < 0).nonzero()[0]]
    ctx.set_summary(
        {
            "clusters": clusters,
            "unclustered": unclustered,
            "clustering": {
                "state": "done",
                "items": len(items),
                "pairs_verified": found.verified,
                "edges": len(edges),
                "threshold": found.threshold,
            },
        }
    )

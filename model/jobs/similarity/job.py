"""The similarity job in the worker: pages through the same pipeline as detection (safe fetch,
IIIF size negotiation, prefetch threads, a content-addressed cache), features per page or per
detected region, then every pair of documents compared (compare.py).

Stages and what survives an interruption:
1. Features, page by page: each page becomes a result item as soon as it is done (progress
   counts pages; a failed page is a failed item, not a failed task). A page redelivered after
   a crash is not emitted twice; its features come back from the cache (or are recomputed).
2. Comparison, document pair by document pair: the result's `pairs` grow as each pair is done,
   so a timeout or cancel keeps the finished pairs (`comparison.done` of `comparison.total`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import cv2

from model.inference.provenance import model_provenance
from model.jobs import JobFailed
from model.jobs.context import JobContext
from model.jobs.contract import Document
from model.jobs.loading import Prepared, decoded_boxes, page_item, to_output_box
from model.jobs.pages import Pages, open_pages
from model.jobs.similarity import DocumentPair, PairMatch, PairSide, SimilarityPage
from model.jobs.similarity import compare as comparing
from model.jobs.similarity.cache import FeatureCache
from model.jobs.similarity.compare import (
    CHANCE_INLIERS,
    INLIER_SCALE,
    MIN_INLIERS,
    RANSAC_THRESHOLD,
)
from model.jobs.similarity.features import PAGE_MIN_KEYPOINT, ItemFeatures, pack, page_items, unpack
from model.jobs.similarity.local import RATIO
from model.pipeline.cache import params_digest

# Bump when feature extraction changes: cached features of older code are then not reused.
FEATURES_VERSION = 1
EMBED_BATCH = 32
# Said from the constants the code uses, so the prose cannot drift from it.
METHOD = {
    "global": "feature extractor's pooled features (GeM) + 16x16 contrast-normalised layout "
    "thumbnail; cosine = mean of the two",
    "shortlist": "each item's `candidates` nearest items on the other side, both ways",
    "verification": f"RootSIFT, ratio test {RATIO:g} + mutual nearest neighbours, RANSAC "
    f"similarity transform (threshold {RANSAC_THRESHOLD:.1%} of the item side); degenerate "
    "(collinear) inliers rejected",
    "photometric": "normalised cross-correlation of the two items aligned by that transform, "
    "over the inliers' bounding box",
    "score": f"(1 - exp(-max(0, inliers - {CHANCE_INLIERS}) / {INLIER_SCALE:g})) * "
    f"max(0, correlation), in [0, 1]; 0 below {MIN_INLIERS} inliers",
    "page_keypoints": f"at page level keypoints smaller than {PAGE_MIN_KEYPOINT:.1%} of the page "
    "side (letters) are dropped",
}


@dataclass
class PageInfo:
    document: str
    item: dict[str, Any]
    origin: tuple[float, float]  # decoded pixels -> canvas: canvas = origin + px * factor
    factor: tuple[float, float]
    detections: list[dict[str, Any]] = field(default_factory=list)

    def to_canvas(self, box: tuple[float, float, float, float]) -> list[int]:
        x1, y1, x2, y2 = box
        (ox, oy), (fx, fy) = self.origin, self.factor
        return [
            round(ox + x1 * fx),
            round(oy + y1 * fy),
            round((x2 - x1) * fx),
            round((y2 - y1) * fy),
        ]


@dataclass
class _Run:
    ctx: JobContext
    params: Any
    embedder: Any
    detector: Any
    cache: FeatureCache
    document_of: list[str]
    finished: set[int]
    pages: dict[int, PageInfo] = field(default_factory=dict)
    items: dict[str, list[ItemFeatures]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # the page pipeline's, shared


def embedder_named(resources: Any, name: str | None) -> Any:
    """The worker's feature extractor `name` (the configured one if None), or JobFailed."""
    name = name or resources.settings.similarity.embed_model
    embedders = resources.embedders
    try:
        embedder = embedders.get(name) if embedders is not None else None
    except Exception as exc:  # a broken plug-in model fails the task, not the worker
        raise JobFailed(
            "model_unavailable", f"feature extractor {name!r} did not load: {exc}"
        ) from exc
    if embedder is None:
        raise JobFailed("model_unavailable", f"feature extractor {name!r} is not available")
    return embedder


def _models(ctx: JobContext, params: Any) -> tuple[Any, Any]:
    resources = ctx.resources
    embedder = embedder_named(resources, params.model)
    detector = None
    if params.level == "region":
        det_name = params.detector or resources.default_model
        detector = resources.detectors.get(det_name)
        if detector is None:
            raise JobFailed("model_unavailable", f"detector {det_name!r} is not loaded")
    return embedder, detector


def run_similarity(ctx: JobContext, params: Any) -> None:
    resources = ctx.resources
    embedder, detector = _models(ctx, params)
    documents = [(entry.name, entry.url) for entry in ctx.spec.of_kind(Document)]
    provenance: dict[str, Any] = {
        "method": METHOD,
        "level": params.level,
        "embedder": {**model_provenance(embedder), "dim": embedder.dim},
        "detector": model_provenance(detector) if detector else None,
        "params": params.model_dump(),
        "worker": resources.settings.worker_name,
        "worker_pid": os.getpid(),
        "versions": {**resources.versions, "opencv": cv2.__version__},
        "stage": "reading manifests",
    }
    ctx.set_provenance(provenance)
    with open_pages(ctx, provenance) as pages:
        _run(ctx, params, pages, embedder, detector, documents)


def _run(
    ctx: JobContext,
    params: Any,
    pages: Pages,
    embedder: Any,
    detector: Any,
    documents: list[tuple[str, str]],
) -> None:
    from model.jobs.similarity.plan import plan_documents

    settings = ctx.resources.settings
    provenance = pages.provenance
    plan = plan_documents(documents, pages.fetcher, settings)
    ctx.set_total(len(plan.units))
    provenance.update(documents=plan.documents, stage="features")
    pages.adopt(plan)

    model_key = f"{embedder.info.sha256}:{detector.info.sha256 if detector else '-'}"
    shaping = {"level": params.level, "max_side": params.max_side, "v": FEATURES_VERSION}
    if detector:
        shaping.update(confidence=params.confidence, iou=params.iou)
    cache = FeatureCache(
        ctx.resources.redis,
        settings.similarity.cache_ttl_s,
        settings.similarity.cache_max_entries,
    )
    loader = pages.loader(
        cache=cache,
        params_key=params_digest(model_key, shaping),
        max_side=params.max_side,
        min_side=min(params.max_side, 512),
    )
    run = _Run(ctx, params, embedder, detector, cache, plan.document_of, pages.finished())
    run.items = {key: [] for key, _ in documents}
    run.timings = pages.timings
    run.timings.update(detect_s=0.0, features_s=0.0, embed_s=0.0)
    pages.closing(lambda: provenance.update(items={k: len(v) for k, v in run.items.items()}))
    started = time.perf_counter()
    with pages.batches(plan.units, loader) as batches:
        for batch in batches:
            _features(run, batch)
    features_wall = time.perf_counter() - started
    provenance["stage"] = "comparing"
    ctx.set_provenance(provenance)
    compare_started = time.perf_counter()
    _compare_all(run, [key for key, _ in documents])
    run.timings["compare_s"] = time.perf_counter() - compare_started
    provenance["stage"] = "done"
    pages_done = max(1, len(run.pages))
    run.timings["per_page_s"] = features_wall / pages_done


# --- stage 1: features --------------------------------------------------------------------------


def _features(run: _Run, batch: list[Prepared]) -> None:
    fresh: list[Prepared] = []
    for prepared in batch:
        if prepared.error is not None:
            _emit_failed(run, prepared)
        elif prepared.cached is not None:
            payload = prepared.cached
            items = unpack(payload["items"], prepared.unit.index)  # type: ignore[index]
            _accept(run, prepared, payload["detections"], items, cached=True)  # type: ignore[index]
        else:
            fresh.append(prepared)
    if not fresh:
        return
    detections: list[list[dict[str, Any]]] = [[] for _ in fresh]
    if run.detector is not None:
        t0 = time.perf_counter()
        found = run.detector.predict(
            [p.image for p in fresh], run.params.confidence, run.params.iou
        )
        run.timings["detect_s"] += time.perf_counter() - t0
        detections = [decoded_boxes(p, dets) for p, dets in zip(fresh, found, strict=True)]
    t0 = time.perf_counter()
    per_page, crops = [], []
    for prepared, dets in zip(fresh, detections, strict=True):
        regions = [d["xyxy"] for d in dets] if run.detector is not None else None
        items, page_crops = page_items(
            prepared.unit.index, prepared.image, prepared.scale, regions, run.params.max_side
        )
        per_page.append(items)
        crops.append(page_crops)
    run.timings["features_s"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    flat = [c for page in crops for c in page]
    vectors = [
        v
        for i in range(0, len(flat), EMBED_BATCH)
        for v in run.embedder.embed(flat[i : i + EMBED_BATCH])
    ]
    run.timings["embed_s"] += time.perf_counter() - t0
    position = 0
    for prepared, dets, items in zip(fresh, detections, per_page, strict=True):
        for item in items:
            item.embedding = vectors[position]
            position += 1
        width, height = prepared.decoded_size
        packed = pack(items)
        if prepared.cache_key:
            run.cache.put(
                prepared.cache_key,
                {
                    "width": width,
                    "height": height,
                    "detections": {"detections": dets, "items": packed},
                },
            )
        # Compare what the cache holds (bytes-quantised descriptors): a page scores the same
        # whether its features were just computed or come from the cache.
        items = unpack(packed, prepared.unit.index)
        prepared.image = None  # free the pixels now
        _accept(run, prepared, dets, items, cached=False)


def _accept(
    run: _Run,
    prepared: Prepared,
    detections: list[dict[str, Any]],
    items: list[ItemFeatures],
    cached: bool,
) -> None:
    index = prepared.unit.index
    document = run.document_of[index]
    width, height = prepared.decoded_size
    rx, ry, rw, rh = to_output_box(prepared, [0, 0, width, height])
    info = PageInfo(
        document=document,
        item=prepared.item,
        origin=(rx, ry),
        factor=(rw / max(1, width), rh / max(1, height)),
    )
    info.detections = [
        {
            "xywh": to_output_box(prepared, d["xyxy"]),
            "confidence": d["confidence"],
            "label": d["label"],
        }
        for d in detections
    ]
    run.pages[index] = info
    run.items[document].extend(items)
    if index in run.finished:
        return  # stored by an earlier attempt of this task
    item = page_item(
        prepared, cached, document=document, detections=info.detections, compared=len(items)
    )
    run.ctx.emit(SimilarityPage.model_validate(item))


def _emit_failed(run: _Run, prepared: Prepared) -> None:
    if prepared.unit.index in run.finished:
        return
    code, message = prepared.error or ("load_error", "")
    item = {
        **prepared.item,
        "document": run.document_of[prepared.unit.index],
        "status": "failed",
        "detections": [],
        "timings": {k: round(v, 4) for k, v in prepared.timings.items()},
        "error": {"code": code, "message": message},
    }
    run.ctx.emit(SimilarityPage.model_validate(item), failed=True)


# --- stage 2: comparison ------------------------------------------------------------------------


def _compare_all(run: _Run, keys: list[str]) -> None:
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i:]]
    for items in run.items.values():  # pages finish in any order: compare in a fixed one
        items.sort(key=lambda item: (item.page, -1 if item.region is None else item.region))
    summary: dict[str, Any] = {"pairs": [], "comparison": {"done": 0, "total": len(pairs)}}
    run.ctx.set_summary(summary)
    for key_a, key_b in pairs:
        run.ctx.check_cancel()
        started = time.perf_counter()
        matches, stats = comparing.compare(
            run.items[key_a],
            run.items[key_b],
            same=key_a == key_b,
            candidates=run.params.candidates,
            top_k=run.params.top_k,
            min_score=run.params.min_score,
            check=run.ctx.check_cancel,
        )
        pair = DocumentPair(
            documents=[key_a, key_b],
            items=[len(run.items[key_a]), len(run.items[key_b])],
            verified=stats.verified,
            seconds=round(time.perf_counter() - started, 3),
            matches=[_describe(run, m) for m in matches],
        )
        summary["pairs"].append(pair.model_dump(mode="json"))
        summary["comparison"]["done"] += 1
        run.ctx.set_summary(summary)


def _side(run: _Run, item: ItemFeatures, area: tuple[float, ...] | None) -> PairSide:
    page = run.pages[item.page]
    if item.region is not None and item.region < len(page.detections):
        xywh = page.detections[item.region]["xywh"]
    else:
        xywh = page.to_canvas(item.box)
    return PairSide(
        document=page.document,
        index=item.page,
        canvas_id=page.item.get("canvas_id"),
        label=page.item.get("label"),
        manifest=page.item.get("manifest"),
        region=item.region,
        xywh=xywh,
        match_xywh=page.to_canvas(area) if area else None,
    )


def _describe(run: _Run, match: comparing.Match) -> PairMatch:
    v = match.verification
    return PairMatch(
        score=match.score,
        inliers=v.inliers,
        matches=v.matches,
        correlation=round(match.correlation, 4),
        cosine=round(match.cosine, 4),
        scale=round(v.scale, 4),
        rotation=round(v.angle, 2),
        a=_side(run, match.a, match.area_a),
        b=_side(run, match.b, match.area_b),
    )

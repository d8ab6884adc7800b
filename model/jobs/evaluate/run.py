"""The evaluate job's work in the worker (declared in model/jobs/evaluate/__init__.py).

Pages are loaded as detect loads them (IIIF canvases: model/jobs/loading.py; a dataset zip's
images decoded as detect decodes an upload: evaluate/dataset.py), the model runs at a low
confidence (every prediction counts for mAP), and each page becomes one result item: its
TP/FP/FN at the task's IoU and confidence, its matches, misses and false alarms in canvas (or
image) coordinates. A page whose annotations cannot be judged (boxes outside the canvas, labels
the model does not have) is a failed item saying why, left out of the figures; the summary holds
the overall and per-class figures (model/jobs/evaluate/metrics.py).
"""

from __future__ import annotations

from typing import Any

from model.jobs import JobFailed
from model.jobs.context import JobContext
from model.jobs.contract import DatasetUpload
from model.jobs.detect import MAX_SIDE_FACTOR
from model.jobs.detect_run import page_loader
from model.jobs.evaluate import SPEC, EvaluateParams
from model.jobs.evaluate.dataset import Dataset
from model.jobs.evaluate.groundtruth import TruthBox, labels_of, outside_canvas
from model.jobs.evaluate.iiif_truth import gather, on_canvases
from model.jobs.evaluate.items import EvaluatePage
from model.jobs.evaluate.metrics import Box, page_outcome, summarise
from model.jobs.loading import Prepared, to_output_box
from model.jobs.pages import Pages, open_pages

# Every prediction down to this confidence counts for mAP (ultralytics' val() uses 0.001).
MAP_CONFIDENCE = 0.001
NMS_IOU = 0.45  # as detect runs (its default): the boxes a user saw are the boxes judged
AGNOSTIC = "any"


class _Judge:
    """Labels and boxes of one page checked against the model and the canvas."""

    def __init__(self, params: EvaluateParams, classes: list[str]) -> None:
        self.params = params
        self.classes = classes
        self.default = params.default_class or (classes[0] if len(classes) == 1 else None)

    def truths(
        self, boxes: list[TruthBox], size: tuple[float | None, float | None]
    ) -> tuple[list[Box], tuple[str, str] | None]:
        outside = outside_canvas(boxes, size)
        if outside is not None:
            return [], outside
        labels = labels_of(boxes, self.default)
        if isinstance(labels, tuple):
            return [], labels
        if not self.params.class_agnostic:
            unknown = sorted(set(labels) - set(self.classes))
            if unknown:
                return [], (
                    "unknown_labels",
                    f"labels {unknown} are not the model's classes {self.classes}: correct them, "
                    "or set params.class_agnostic",
                )
        return [Box(self.label(lb), b.xywh) for lb, b in zip(labels, boxes, strict=True)], None

    def label(self, label: str) -> str:
        return AGNOSTIC if self.params.class_agnostic else label


def run_evaluate(ctx: JobContext) -> None:
    params = EvaluateParams(**ctx.spec.params)
    resources = ctx.resources
    name = params.model or resources.default_model
    detector = resources.detectors.get(name)
    if detector is None:
        raise JobFailed("model_unavailable", f"model {name!r} is not loaded on this worker")
    classes = list(detector.info.classes)
    judge = _Judge(params, classes)
    provenance: dict[str, Any] = {
        **resources.provenance(detector),
        "params": params.model_dump(),
        "classes": classes,
        "map_confidence": MAP_CONFIDENCE,
        "nms_iou": NMS_IOU,
    }
    ctx.set_provenance(provenance)
    scored: list[tuple[list[Box], list[Box]]] = []
    datasets = ctx.spec.of_kind(DatasetUpload)
    with open_pages(ctx, provenance) as pages:
        if datasets:
            problems = _evaluate_dataset(ctx, datasets[0], detector, judge, scored)
        else:
            problems = _evaluate_manifest(ctx, params, detector, judge, scored, pages)
        summary = summarise(scored, params.iou, params.confidence)
        summary.update(
            pages={
                "evaluated": len(scored),
                "failed": ctx.failed_count(),
            },
            annotation_problems=problems,
            iou=params.iou,
            confidence=params.confidence,
        )
        ctx.set_summary({"evaluation": summary})


# --- a IIIF manifest and its annotations ------------------------------------------------------


def _evaluate_manifest(
    ctx: JobContext,
    params: EvaluateParams,
    detector: Any,
    judge: _Judge,
    scored: list[tuple[list[Box], list[Box]]],
    pages: Pages,
) -> list[dict[str, str]]:
    plan = pages.plan_task(keep_manifests=True)
    truths, problems = on_canvases(gather(ctx, plan, pages.fetcher), plan)
    units = [
        u
        for u in plan.units
        if u.canvas is not None and (params.pages == "all" or u.canvas.canvas.id in truths)
    ]
    ctx.set_total(len(units))
    ready = []
    for unit in units:
        canvas = unit.canvas.canvas
        boxes, reason = judge.truths(truths.get(canvas.id, []), (canvas.width, canvas.height))
        if reason is None:
            ready.append((unit, boxes))
            continue
        code, message = reason
        item = {"index": unit.index, "source": unit.source, "canvas_id": canvas.id}
        item.update(status="failed", error={"code": code, "message": message})
        ctx.emit(EvaluatePage.model_validate(item), True)
    boxes_of = {unit.index: boxes for unit, boxes in ready}
    max_side = params.max_side or detector.imgsz * MAX_SIDE_FACTOR
    analysis = {"confidence": MAP_CONFIDENCE, "iou": NMS_IOU, "max_side": max_side}
    loader = page_loader(pages, detector, max_side, analysis)
    with pages.batches([u for u, _ in ready], loader) as batches:
        for batch in batches:
            for prepared, preds in _predict(batch, detector, loader.cache):
                if preds is None:
                    ctx.emit(EvaluatePage.model_validate(prepared.item), failed=True)
                    continue
                truth = boxes_of[prepared.unit.index]
                found = [Box(judge.label(p.label), p.xywh, p.confidence) for p in preds]
                width, height = prepared.decoded_size
                item = {**prepared.item, "width": width, "height": height}
                _emit(ctx, item, found, truth, params, scored)
    return problems


def _predict(batch: list[Prepared], detector: Any, cache: Any) -> list[tuple[Prepared, Any]]:
    """Each page's predictions in its item's coordinates (None: the page could not be loaded;
    its item says why)."""
    out: list[tuple[Prepared, Any]] = []
    todo = [p for p in batch if p.error is None and p.cached is None]
    found = detector.predict([p.image for p in todo], MAP_CONFIDENCE, NMS_IOU) if todo else []
    fresh = dict(zip([id(p) for p in todo], found, strict=True))
    for prepared in batch:
        if prepared.error is not None:
            code, message = prepared.error
            prepared.item.update(status="failed", error={"code": code, "message": message})
            out.append((prepared, None))
            continue
        if prepared.cached is not None:
            decoded = prepared.cached
        else:
            decoded = [
                {**d, "xyxy": [v / prepared.scale for v in d["xyxy"]]} for d in fresh[id(prepared)]
            ]
            if prepared.cache_key:
                width, height = prepared.decoded_size
                cache.put(
                    prepared.cache_key, {"width": width, "height": height, "detections": decoded}
                )
        prepared.image = None
        preds = [
            Box(d["label"], tuple(to_output_box(prepared, d["xyxy"])), float(d["confidence"]))  # type: ignore[arg-type]
            for d in decoded
        ]
        out.append((prepared, preds))
    return out


# --- a YOLO dataset zip ------------------------------------------------------------------------


def _evaluate_dataset(
    ctx: JobContext,
    entry: DatasetUpload,
    detector: Any,
    judge: _Judge,
    scored: list[tuple[list[Box], list[Box]]],
) -> list[dict[str, str]]:
    settings = ctx.resources.settings
    dataset = Dataset(
        ctx.resources.uploads.read(entry),
        judge.classes,
        SPEC.limits_in(settings).max_images,
        settings.fetch.max_pixels,
        analyse_side=detector.imgsz,  # as detect decodes an uploaded image
    )
    if not any(dataset.labels.values()):
        raise JobFailed("no_ground_truth", "no image of the dataset has a label file")
    ctx.set_total(len(dataset.pages))
    batch_size = max(1, settings.worker.batch_size)
    for start in range(0, len(dataset.pages), batch_size):
        ctx.check_cancel()
        ready = []
        for index, page in enumerate(dataset.pages[start : start + batch_size], start=start):
            dataset.load(page)
            item = {"index": index, "source": f"dataset:{page.name}"}
            truths, reason = ([], page.error) if page.error else judge.truths(page.boxes, page.size)
            if reason is not None:
                error = {"code": reason[0], "message": reason[1]}
                ctx.emit(
                    EvaluatePage.model_validate({**item, "status": "failed", "error": error}), True
                )
                continue
            ready.append((item, page, truths))
        found = detector.predict([p.image for _, p, _ in ready], MAP_CONFIDENCE, NMS_IOU)
        for (item, page, truths), preds in zip(ready, found, strict=True):
            boxes = [
                Box(
                    judge.label(d["label"]),
                    _xyxy_to_xywh([v / page.scale for v in d["xyxy"]]),
                    d["confidence"],
                )
                for d in preds
            ]
            width, height = page.size
            item.update(width=width, height=height)
            _emit(ctx, item, boxes, truths, judge.params, scored)
            page.image = None
    return []


def _xyxy_to_xywh(xyxy: list[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = xyxy
    return (x1, y1, x2 - x1, y2 - y1)


# --- one page's result ----------------------------------------------------------------------


def _xywh(box: Box) -> list[float]:
    return [round(v, 1) for v in box.xywh]


def _emit(
    ctx: JobContext,
    item: dict[str, Any],
    preds: list[Box],
    truths: list[Box],
    params: EvaluateParams,
    scored: list[tuple[list[Box], list[Box]]],
) -> None:
    scored.append((preds, truths))
    outcome = page_outcome(preds, truths, params.iou, params.confidence)
    result = {
        **item,
        "status": "ok",
        **outcome.counts(),
        "truths": len(truths),
        "matches": [
            {
                "label": t.label,
                "truth": _xywh(t),
                "detection": _xywh(p),
                "confidence": round(p.confidence, 4),
            }
            for p, t in outcome.matched
        ],
        "misses": [{"label": t.label, "xywh": _xywh(t)} for t in outcome.misses],
        "false_alarms": [
            {"label": p.label, "xywh": _xywh(p), "confidence": round(p.confidence, 4)}
            for p in outcome.false_alarms
        ],
    }
    if item.get("canvas_id"):
        result["coordinates"] = "canvas"
    ctx.emit(EvaluatePage.model_validate(result))

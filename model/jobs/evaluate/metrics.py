"""Detection metrics of the evaluate job (numpy only): matching predictions to ground truth,
counts at one IoU and confidence, and average precision over IoU 0.50:0.95.

Matching is COCO's: per page and class, predictions by falling confidence each take the unmatched
ground-truth box they overlap most, if that IoU reaches the threshold. AP is ultralytics' own
(`ultralytics.utils.metrics.ap_per_class` / `compute_ap`: the precision envelope sampled at 101
recall points and integrated), so figures agree with `model.val()` given the same matches;
server/tests/test_evaluate.py checks both against each other and against a hand-computed case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class Box:
    label: str
    xywh: tuple[float, float, float, float]
    confidence: float = 1.0


def iou_matrix(a: list[Box], b: list[Box]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    pa = np.array([x.xywh for x in a], dtype=float)
    pb = np.array([x.xywh for x in b], dtype=float)
    ax1, ay1, ax2, ay2 = pa[:, 0:1], pa[:, 1:2], pa[:, 0:1] + pa[:, 2:3], pa[:, 1:2] + pa[:, 3:4]
    bx1, by1, bx2, by2 = pb[:, 0], pb[:, 1], pb[:, 0] + pb[:, 2], pb[:, 1] + pb[:, 3]
    w = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    h = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = w * h
    union = (pa[:, 2:3] * pa[:, 3:4]) + (pb[:, 2] * pb[:, 3]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(preds: list[Box], truths: list[Box], threshold: float) -> list[int | None]:
    """For each prediction (in the given order), the index of the truth it matches, or None."""
    ious = iou_matrix(preds, truths)
    taken: set[int] = set()
    found: list[int | None] = [None] * len(preds)
    for i in sorted(range(len(preds)), key=lambda k: -preds[k].confidence):
        best, best_iou = None, threshold
        for j, truth in enumerate(truths):
            if j in taken or truth.label != preds[i].label:
                continue
            if ious[i, j] >= best_iou:
                best, best_iou = j, ious[i, j]
        if best is not None:
            taken.add(best)
            found[i] = best
    return found


@dataclass
class PageOutcome:
    """One page at the job's IoU and confidence: what matched, what was missed, what was not
    there."""

    matched: list[tuple[Box, Box]] = field(default_factory=list)  # (prediction, truth)
    false_alarms: list[Box] = field(default_factory=list)
    misses: list[Box] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"tp": len(self.matched), "fp": len(self.false_alarms), "fn": len(self.misses)}


def page_outcome(preds: list[Box], truths: list[Box], iou: float, confidence: float) -> PageOutcome:
    kept = [p for p in preds if p.confidence >= confidence]
    found = match(kept, truths, iou)
    outcome = PageOutcome()
    for pred, j in zip(kept, found, strict=True):
        if j is None:
            outcome.false_alarms.append(pred)
        else:
            outcome.matched.append((pred, truths[j]))
    taken = {j for j in found if j is not None}
    outcome.misses = [t for j, t in enumerate(truths) if j not in taken]
    return outcome


def tp_matrix(preds: list[Box], truths: list[Box]) -> np.ndarray:
    """(predictions x 10 IoU thresholds): whether each prediction is a true positive at each."""
    columns = [[j is not None for j in match(preds, truths, t)] for t in IOU_THRESHOLDS]
    return np.array(columns, dtype=bool).T.reshape(len(preds), len(IOU_THRESHOLDS))


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """ultralytics' compute_ap (8.4: precision falls to 0 past the highest recall reached)."""
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AP (classes x IoU thresholds) of each class with ground truth, and those classes; the
    same computation as ultralytics' ap_per_class."""
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, counts = np.unique(target_cls, return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    for ci, (c, n_truth) in enumerate(zip(classes, counts, strict=True)):
        mine = pred_cls == c
        if not mine.any():
            continue
        tpc = tp[mine].cumsum(0)
        fpc = (1 - tp[mine]).cumsum(0)
        recall = tpc / (n_truth + 1e-16)
        precision = tpc / (tpc + fpc)
        for t in range(tp.shape[1]):
            ap[ci, t] = compute_ap(recall[:, t], precision[:, t])
    return ap, classes


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def summarise(
    pages: list[tuple[list[Box], list[Box]]], iou: float, confidence: float
) -> dict[str, Any]:
    """Overall and per-class precision, recall, F1 (at `iou` and `confidence`), mAP50 and
    mAP50-95 (every prediction), over (predictions, truths) of each page."""
    labels = sorted({b.label for preds, truths in pages for b in [*preds, *truths]})
    index = {label: i for i, label in enumerate(labels)}
    tps, confs, pred_cls, target_cls = [], [], [], []
    counts = {label: {"tp": 0, "fp": 0, "fn": 0} for label in labels}
    for preds, truths in pages:
        tps.append(tp_matrix(preds, truths))
        confs += [p.confidence for p in preds]
        pred_cls += [index[p.label] for p in preds]
        target_cls += [index[t.label] for t in truths]
        outcome = page_outcome(preds, truths, iou, confidence)
        for pred, _ in outcome.matched:
            counts[pred.label]["tp"] += 1
        for pred in outcome.false_alarms:
            counts[pred.label]["fp"] += 1
        for truth in outcome.misses:
            counts[truth.label]["fn"] += 1
    tp = np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS)), dtype=bool)
    ap, classes = ap_per_class(tp, np.array(confs), np.array(pred_cls), np.array(target_cls))
    ap_of = {labels[int(c)]: ap[i] for i, c in enumerate(classes)}
    per_class = {}
    for label in labels:
        c = counts[label]
        row = _scores(c["tp"], c["fp"], c["fn"])
        class_ap = ap_of.get(label)
        row["mAP50"] = round(float(class_ap[0]), 4) if class_ap is not None else None
        row["mAP50_95"] = round(float(class_ap.mean()), 4) if class_ap is not None else None
        per_class[label] = row
    total = {k: sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn")}
    overall = _scores(total["tp"], total["fp"], total["fn"])
    overall["mAP50"] = round(float(ap[:, 0].mean()), 4) if len(ap) else 0.0
    overall["mAP50_95"] = round(float(ap.mean()), 4) if len(ap) else 0.0
    return {"overall": overall, "per_class": per_class}


def _scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}

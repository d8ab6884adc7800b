"""Compare the items (pages or regions) of two documents: shortlist, verify, score, rank.

1. Shortlist: the global descriptor's cosine (see features.py) picks, for each item, its
   `candidates` most similar items on the other side (both ways); every other pair is skipped.
2. Geometric check: SIFT matches + RANSAC similarity transform (local.py) -> inliers.
3. Photometric check: the second image warped by that transform onto the first; normalised
   cross-correlation over the matched area (the inliers' bounding box). A true copy lines up
   pixel for pixel; chance inliers between two different pictures give a wrong transform and a
   correlation near zero. This separates copies even where keypoints are few (smooth plates).
4. Score in [0, 1]: evidence(inliers) x correlation, where evidence = 1 - exp(-(n - 5) / 6)
   discounts the handful of inliers RANSAC finds between any two pictures (after the ratio and
   mutual tests, unrelated pictures give at most 5-7 on our synthetic pages; copies 6-365).
   Inliers that lie on one line (a rule, a chart's axis) fit many transforms equally well: such
   a fit scores 0, and so does one whose inliers fit in a sliver narrower than 5% of the item
   (a few aligned letters or hatch lines are not a copied picture). The correlation window is
   at least half as wide as it is long: two frames' edges lined up at 90 degrees correlate
   well along a thin strip, not over an area.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from model.jobs.similarity.features import THUMB_FACTOR, ItemFeatures
from model.jobs.similarity.local import Verification, verify

CHANCE_INLIERS = 5
INLIER_SCALE = 6.0
MIN_INLIERS = 5  # below this the photometric check is not run: the score is 0
RANSAC_THRESHOLD = 0.015  # of the first item's analysed long side
BBOX_MARGIN = 0.15
MIN_CHECK_PIXELS = 100  # thumbnail pixels the correlation needs to mean anything
MIN_WINDOW_ASPECT = 0.5
MIN_SPREAD = 0.08  # narrowest / widest spread of the inliers: an area, not a line
MIN_SPREAD_PX = 2.0
MIN_EXTENT = 0.05  # of the item's long side: the least width and height of the matched area


@dataclass
class Match:
    a: ItemFeatures
    b: ItemFeatures
    score: float
    cosine: float
    verification: Verification
    correlation: float = 0.0
    area_a: tuple[float, float, float, float] | None = None  # matched area, decoded pixels
    area_b: tuple[float, float, float, float] | None = None


@dataclass
class PairStats:
    candidates: int = 0
    verified: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def evidence(inliers: int) -> float:
    return 1.0 - math.exp(-max(0, inliers - CHANCE_INLIERS) / INLIER_SCALE)


def global_matrix(a: list[ItemFeatures], b: list[ItemFeatures]) -> np.ndarray:
    """Cosine of the joined descriptors: the mean of the extractor's and the layout's."""
    ea = np.stack([i.embedding for i in a])
    eb = np.stack([i.embedding for i in b])
    la = np.stack([i.layout for i in a])
    lb = np.stack([i.layout for i in b])
    return (ea @ eb.T + la @ lb.T) / 2.0


def shortlist(sims: np.ndarray, k: int, same: bool) -> list[tuple[int, int]]:
    """Pairs (i, j) among each row's and each column's k best. For a document compared with
    itself: i < j only (one of each unordered pair, never an item with itself)."""
    n, m = sims.shape
    chosen: set[tuple[int, int]] = set()
    if same:
        sims = sims.copy()
        np.fill_diagonal(sims, -np.inf)
    for i in range(n):
        for j in np.argsort(-sims[i])[: min(k, m)]:
            chosen.add((i, int(j)))
    for j in range(m):
        for i in np.argsort(-sims[:, j])[: min(k, n)]:
            chosen.add((int(i), j))
    if same:
        chosen = {(min(i, j), max(i, j)) for i, j in chosen if i != j}
    return sorted(chosen)


def spread(points: np.ndarray) -> tuple[float, float]:
    """Standard deviations of the points along their narrowest and widest directions (px)."""
    if len(points) < 3:
        return 0.0, 0.0
    eigenvalues = np.linalg.eigvalsh(np.cov(points.astype(np.float64).T))
    return float(math.sqrt(max(0.0, eigenvalues[0]))), float(math.sqrt(max(0.0, eigenvalues[1])))


def degenerate(points: np.ndarray) -> bool:
    """Points (nearly) on one line: narrower than MIN_SPREAD of their length, or than 2 px.
    A band-shaped picture (a head-piece, 1:6) is not degenerate; an axis or a rule (1:30) is."""
    narrow, wide = spread(points)
    return narrow < max(MIN_SPREAD_PX, MIN_SPREAD * wide)


def _small(points: np.ndarray, item: ItemFeatures) -> bool:
    """The inliers' bounding box is narrower than MIN_EXTENT of the item's long side."""
    extent = points.max(axis=0) - points.min(axis=0)
    return float(extent.min()) < MIN_EXTENT * max(item.local.size)


def _bbox(points: np.ndarray, margin: float, limit: tuple[int, int]) -> tuple[int, ...]:
    x1, y1 = points.min(axis=0)
    x2, y2 = points.max(axis=0)
    mx, my = (x2 - x1) * margin + 2, (y2 - y1) * margin + 2
    return (
        max(0, int(x1 - mx)),
        max(0, int(y1 - my)),
        min(limit[0], math.ceil(x2 + mx)),
        min(limit[1], math.ceil(y2 + my)),
    )


def _window(points: np.ndarray, limit: tuple[int, int]) -> tuple[int, ...]:
    """The inliers' bounding box with a margin, its short side grown to half its long side."""
    x1, y1, x2, y2 = _bbox(points, BBOX_MARGIN, limit)
    need = max(x2 - x1, y2 - y1) * MIN_WINDOW_ASPECT
    if x2 - x1 < need:
        grow = (need - (x2 - x1)) / 2
        x1, x2 = max(0, int(x1 - grow)), min(limit[0], math.ceil(x2 + grow))
    if y2 - y1 < need:
        grow = (need - (y2 - y1)) / 2
        y1, y2 = max(0, int(y1 - grow)), min(limit[1], math.ceil(y2 + grow))
    return x1, y1, x2, y2


def correlation(
    a: ItemFeatures, b: ItemFeatures, matrix: np.ndarray, inliers_a: np.ndarray
) -> float:
    """NCC of a's thumbnail and b's warped onto it, over the inliers' bounding box."""
    m = matrix.astype(np.float32).copy()
    m[:, 2] *= THUMB_FACTOR  # same transform between half-size images: only the shift scales
    height, width = a.thumb.shape
    warped = cv2.warpAffine(b.thumb.astype(np.float32), m, (width, height), flags=cv2.INTER_LINEAR)
    valid = (
        cv2.warpAffine(
            np.ones(b.thumb.shape, np.float32), m, (width, height), flags=cv2.INTER_NEAREST
        )
        > 0.5
    )
    x1, y1, x2, y2 = _window(inliers_a * THUMB_FACTOR, (width, height))
    window = np.zeros_like(valid)
    window[y1:y2, x1:x2] = True
    mask = valid & window
    if mask.sum() < MIN_CHECK_PIXELS:
        return 0.0
    # Smooth both a little: the check is about shapes lining up, not about grain.
    pa = cv2.GaussianBlur(a.thumb.astype(np.float32), (0, 0), 1.0)[mask]
    pb = cv2.GaussianBlur(warped, (0, 0), 1.0)[mask]
    pa -= pa.mean()
    pb -= pb.mean()
    denom = math.sqrt(float((pa * pa).sum()) * float((pb * pb).sum()))
    return float((pa * pb).sum() / denom) if denom > 1e-6 else 0.0


def verify_pair(a: ItemFeatures, b: ItemFeatures, cosine: float) -> Match:
    threshold = RANSAC_THRESHOLD * max(a.local.size)
    result = verify(a.local, b.local, threshold)
    match = Match(a, b, 0.0, cosine, result)
    if result.inliers < MIN_INLIERS or result.transform is None:
        return match
    matrix = np.array(result.transform, dtype=np.float32).reshape(2, 3)
    inliers_a, inliers_b = result.inlier_points
    if degenerate(inliers_a) or _small(inliers_a, a) or _small(inliers_b, b):
        return match  # on one line, or in a sliver: not enough of a picture to call it a copy
    match.correlation = correlation(a, b, matrix, inliers_a)
    match.score = round(evidence(result.inliers) * max(0.0, match.correlation), 4)
    match.area_a = _decoded_area(a, inliers_a)
    match.area_b = _decoded_area(b, inliers_b)
    return match


def _decoded_area(item: ItemFeatures, points: np.ndarray) -> tuple[float, float, float, float]:
    decoded = item.to_decoded(points)
    x1, y1 = decoded.min(axis=0)
    x2, y2 = decoded.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def compare(
    a: list[ItemFeatures],
    b: list[ItemFeatures],
    same: bool,
    candidates: int,
    top_k: int,
    min_score: float = 0.0,
    check: Callable[[], None] = lambda: None,
) -> tuple[list[Match], PairStats]:
    """The top_k matches scoring at least min_score between two documents' items, best first
    (score, then cosine). `check` is called between verifications (it raises to cancel)."""
    stats = PairStats()
    if not a or not b:
        return [], stats
    sims = global_matrix(a, b)
    pairs = shortlist(sims, candidates, same)
    stats.candidates = len(pairs)
    matches = []
    for n, (i, j) in enumerate(pairs):
        if n % 16 == 0:
            check()
        matches.append(verify_pair(a[i], b[j], float(sims[i, j])))
    stats.verified = len(matches)
    matches = [m for m in matches if m.score >= min_score]
    matches.sort(key=lambda m: (-m.score, -m.cosine))
    return matches[:top_k], stats

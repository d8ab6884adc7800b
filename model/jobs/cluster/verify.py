"""The cluster job's pair verification: similarity's check (RANSAC similarity transform on mutual
ratio-test matches, then the photometric correlation of the aligned thumbnails, see
model/jobs/similarity/compare.py), made cheap enough for 10,000 items.

What makes it cheap, each measured on bench/cluster.py's corpus (docs/cluster.md):
- one matrix product per item against all its candidates, both orientations at once (numpy on
  one BLAS thread: several times faster than a product per pair with cv2.gemm);
- only each item's KEYPOINTS strongest keypoints (they are stored strongest first);
- RANSAC runs only in the orientation with more matches (the other one only if that fails and
  it has enough matches too), and not at all when the matches are too few for the score to
  reach the threshold (inliers <= matches; the score is at most evidence(inliers));
- a first pass on each item's PRESCREEN_KEYPOINTS strongest keypoints: a pair with too few
  matches there is not matched in full (with a threshold only);
- (every shortlisted pair is verified: a pair whose items were already joined by other edges
  was skipped while families were single linkage, but the families' join rule now counts the
  edges between groups, so each one matters; the skip saved ~9% of the time)
- a second chance on COARSE keypoints (SIFT on the item blurred until fine hatching is tone,
  coarse.py) for the candidates the fine keypoints did not join: engravings' and plates'
  repetitive hatching gives ambiguous fine descriptors that the ratio test discards. A coarse
  edge counts only at COARSE_MIN or more (fewer, less distinctive keypoints).
- items verified ROUND at a time on the worker's inference threads (two threads: 1.5x where
  two cores are free; about a third of the time holds the GIL).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from model.jobs.similarity.compare import (
    CHANCE_INLIERS,
    INLIER_SCALE,
    MIN_EXTENT,
    MIN_INLIERS,
    RANSAC_THRESHOLD,
    correlation,
    degenerate,
    evidence,
)
from model.jobs.similarity.features import ItemFeatures
from model.jobs.similarity.local import RANSAC_SEED, RATIO, SCALE_RANGE

T = TypeVar("T")
R = TypeVar("R")
# Found once: each threadpool_limits() call would look for the BLAS libraries again (slow)
BLAS = ThreadpoolController()
KEYPOINTS = 256  # per item and orientation, the strongest (describe() keeps up to 500)
# The first pass: matches among the strongest PRESCREEN_KEYPOINTS. On the dev seed every pair
# that verified at 0.4 had at least 5 there; two thirds of the others had fewer.
PRESCREEN_KEYPOINTS = 96
PRESCREEN_MATCHES = 5
# A coarse second chance's least score. Dev seed (the shortlisted pairs the fine check failed
# at 0.15, with 12 bag-of-words neighbours more; docs/cluster.md, Round 4): 0.15 ->
# 33 same-family pairs joined and 1 false, 0.3 -> 20 and 0
COARSE_MIN = 0.3
# The second chance's first pass, as the fine one's: on the dev seed every pair it joined had
# at least 7 matches among the strongest 48 coarse keypoints; 5 keeps 581 of 2,520 pairs
COARSE_PRESCREEN_KEYPOINTS = 48
COARSE_PRESCREEN_MATCHES = 5
# ... and RANSAC only from this many coarse matches: every pair joined had 10 or more (a third
# of the ones with 8, the fewest that could score COARSE_MIN, reach 10)
COARSE_MATCHES = 10
RATIO_SQUARED = RATIO * RATIO
# Items verified at a time (spread over the threads; a cancel is seen between them)
ROUND = 32


@dataclass(frozen=True)
class Scored:
    score: float
    mirrored: bool


def min_matches(threshold: float) -> int:
    """The fewest matches whose inliers could score `threshold`: evidence(n) >= threshold."""
    if threshold <= 0:
        return MIN_INLIERS
    if threshold >= 1:
        return 1 << 30
    need = CHANCE_INLIERS + INLIER_SCALE * -math.log(1.0 - threshold)
    return max(MIN_INLIERS, math.ceil(need - 1e-9))


def mutual_ratio_matches(
    sims: np.ndarray, counts: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Similarity's matcher (model/jobs/similarity/local.py) on many blocks at once. `sims` is
    rows (a's descriptors) x blocks x columns: each block one other image's descriptors (unit
    RootSIFT vectors, all >= 0) padded with zero vectors to one width, `counts` its real ones.
    Padding scores 0, never above a real column, so it changes no best or second best. For each
    block, the indices (ia, ib) that pass Lowe's ratio test and are mutual nearest neighbours
    within the block."""
    rows, blocks, width = sims.shape
    if rows == 0 or width < 2:
        return [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * blocks
    best = sims.argmax(axis=2)  # rows x blocks
    # Plain index grids: take_along_axis / put_along_axis cost more than these small products
    at = (np.arange(rows)[:, None], np.arange(blocks)[None, :], best)
    s1 = sims[at]
    column_best = sims.max(axis=0)  # blocks x columns
    mutual = s1 >= column_best[at[1], best]
    sims[at] = -np.inf
    s2 = sims.max(axis=2)  # the second best (the best again where two columns tie)
    # d1 < RATIO * d2 on distances d = sqrt(2 - 2 s): compared squared, no square roots
    ratio = np.maximum(0.0, 1.0 - s1) < RATIO_SQUARED * np.maximum(0.0, 1.0 - s2)
    keep = ratio & mutual & (counts >= 2)[None]
    block, ia = np.nonzero(keep.T)  # by block, then row
    cuts = np.searchsorted(block, np.arange(1, blocks))
    return list(zip(np.split(ia, cuts), np.split(best[ia, block], cuts), strict=True))


def _small(points: np.ndarray, item: ItemFeatures) -> bool:
    extent = points.max(axis=0) - points.min(axis=0)
    return float(extent.min()) < MIN_EXTENT * max(item.local.size)


def fit(
    a: ItemFeatures, b: ItemFeatures, ia: np.ndarray, ib: np.ndarray, least: int = MIN_INLIERS
) -> tuple[float, np.ndarray | None]:
    """Similarity's score (0-1) of b against a from their matches, as compare.verify_pair
    gives it, and the 2x3 transform b -> a (None when the score is 0). Fewer than `least`
    inliers score 0 without the photometric check (the caller wants no lower score)."""
    if len(ia) < MIN_INLIERS:
        return 0.0, None
    cv2.setRNGSeed(RANSAC_SEED)  # the same two items always give the same answer
    matrix, mask = cv2.estimateAffinePartial2D(
        b.local.points[ib],
        a.local.points[ia],
        method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_THRESHOLD * max(a.local.size),
        maxIters=2000,
        confidence=0.995,
    )
    if matrix is None or mask is None:
        return 0.0, None
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    keep = mask.ravel().astype(bool)
    inliers = int(keep.sum())
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or inliers < max(MIN_INLIERS, least):
        return 0.0, None
    points_a, points_b = a.local.points[ia[keep]], b.local.points[ib[keep]]
    if degenerate(points_a) or _small(points_a, a) or _small(points_b, b):
        return 0.0, None
    matrix = matrix.astype(np.float32)
    value = round(evidence(inliers) * max(0.0, correlation(a, b, matrix, points_a)), 4)
    return value, (matrix if value > 0 else None)


def alignments(
    reference: ItemFeatures,
    upright: list[ItemFeatures],
    mirrored: list[ItemFeatures],
    keypoints: int = KEYPOINTS,
) -> list[tuple[float, np.ndarray, bool] | None]:
    """Each other item's best transform onto the reference (score, 2x3 matrix, mirrored), or
    None where neither orientation verifies: one product for all of them."""
    sides = [side for pair in zip(upright, mirrored, strict=True) for side in pair]
    if not sides:
        return []
    with BLAS.limit(limits=1):
        found = _match(reference, sides, keypoints)
    out: list[tuple[float, np.ndarray, bool] | None] = []
    for n in range(len(upright)):
        best = None
        for o in (0, 1):
            value, matrix = fit(reference, sides[2 * n + o], *found[2 * n + o])
            if matrix is not None and (best is None or value > best[0]):
                best = (value, matrix, bool(o))
        out.append(best)
    return out


def _descriptors(item: ItemFeatures, keypoints: int) -> np.ndarray:
    return item.local.descriptors[:keypoints]


def _stack(blocks: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The blocks' rows, each block padded with zero rows to `width`; each block's real rows."""
    stacked = np.zeros((len(blocks) * width, blocks[0].shape[1] if blocks else 128), np.float32)
    for n, block in enumerate(blocks):
        stacked[n * width : n * width + len(block)] = block
    return stacked, np.array([len(b) for b in blocks])


def _match(
    a: ItemFeatures, others: list[ItemFeatures], keypoints: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """a's matches with each of `others` on their `keypoints` strongest keypoints: one product."""
    stacked, counts = _stack([_descriptors(o, keypoints) for o in others], keypoints)
    sims = (_descriptors(a, keypoints) @ stacked.T).reshape(-1, len(others), keypoints)
    return mutual_ratio_matches(sims, counts)


def _pairs_by_item(pairs: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for i, j in pairs:
        grouped.setdefault(i, []).append(j)
    return grouped


@dataclass(frozen=True)
class Coarse:
    """Every item's coarse features (ItemFeatures whose local ones are coarse.py's), upright
    and mirrored, by item index."""

    upright: list[ItemFeatures]
    mirrored: list[ItemFeatures]


def second_chance(
    a: ItemFeatures, candidates: list[int], coarse: Coarse
) -> list[tuple[int, Scored]]:
    """a's coarse features against each candidate's, upright and mirrored: the candidates that
    score COARSE_MIN or more, with their score."""
    if not candidates or len(a.local) < MIN_INLIERS:
        return []
    sides = [side for j in candidates for side in (coarse.upright[j], coarse.mirrored[j])]
    width = max(len(s.local) for s in sides)
    if width < MIN_INLIERS:
        return []
    prescreen = (COARSE_PRESCREEN_KEYPOINTS, COARSE_PRESCREEN_MATCHES)
    need = max(COARSE_MATCHES, min_matches(COARSE_MIN))
    scored = _scored(a, sides, prescreen, width, need, min_matches(COARSE_MIN), COARSE_MIN)
    return [(candidates[n], s) for n, s in scored]


def _scored(
    a: ItemFeatures,
    sides: list[ItemFeatures],
    prescreen: tuple[int, int] | None,
    keypoints: int,
    need: int,
    least_inliers: int = MIN_INLIERS,
    least: float = 0.0,
) -> list[tuple[int, Scored]]:
    """a against `sides` (candidate n's upright side 2n, mirrored 2n + 1) on `keypoints`
    keypoints, scored by _fit_best. With a `prescreen` (keypoints, matches), a first pass on
    that many of the strongest keypoints drops the sides with fewer matches: most unrelated
    pairs stop there, and so does the orientation of a pair that fails it (the full product
    then costs half)."""
    tried = list(range(len(sides)))
    if prescreen is not None:
        first = _match(a, sides, min(prescreen[0], keypoints))
        tried = [t for t in tried if len(first[t][0]) >= prescreen[1]]
    found = _match(a, [sides[t] for t in tried], keypoints) if tried else []
    return _fit_best(a, sides, tried, found, need, least_inliers, least)


def _fit_best(
    a: ItemFeatures,
    sides: list[ItemFeatures],
    tried: list[int],
    found: list[tuple[np.ndarray, np.ndarray]],
    need: int,
    least_inliers: int = MIN_INLIERS,
    least: float = 0.0,
) -> list[tuple[int, Scored]]:
    """For each candidate n (sides 2n upright, 2n + 1 mirrored) with matches `found` on the
    `tried` sides: its better side's score (the side with more matches first, the other if
    that fails; none with fewer than `need` matches), where it is above 0 and at least
    `least` (fewer than `least_inliers` inliers cannot reach it: fit skips the photometric
    check)."""
    by_side = dict(zip(tried, found, strict=True))
    out = []
    for n in sorted({t // 2 for t in tried}):
        order = sorted(
            (t for t in (2 * n, 2 * n + 1) if t in by_side), key=lambda t: -len(by_side[t][0])
        )
        for t in order:
            ia, ib = by_side[t]
            if len(ia) < need:
                break
            value, _ = fit(a, sides[t], ia, ib, least_inliers)
            if value > 0 and value >= least:
                out.append((n, Scored(value, bool(t % 2))))
                break
    return out


def _verify_item(
    a: ItemFeatures,
    candidates: list[int],
    upright: list[ItemFeatures],
    mirrored: list[ItemFeatures],
    threshold: float | None,
    keypoints: int,
) -> list[tuple[int, Scored]]:
    """a (upright) against each candidate upright and mirrored: the candidates that score above
    0, with their score. Pure (no shared state): items run on several threads at once."""
    need = MIN_INLIERS if threshold is None else min_matches(threshold)
    sides = [side for j in candidates for side in (upright[j], mirrored[j])]
    prescreen = None if threshold is None else (PRESCREEN_KEYPOINTS, PRESCREEN_MATCHES)
    return [(candidates[n], s) for n, s in _scored(a, sides, prescreen, keypoints, need)]


def _verify_args(args: tuple) -> list[tuple[int, Scored]]:
    return _verify_item(*args)


class _Inline:
    """A thread pool's map on the calling thread (one thread: no pool)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    @staticmethod
    def map(function: Callable[[T], R], iterable: Iterable[T]) -> Iterator[R]:
        return map(function, iterable)


def pool(threads: int) -> ThreadPoolExecutor | _Inline:
    """`threads` threads for independent work whose numpy/OpenCV calls release the GIL (its
    map gives the answers in order); on exit, work not started is cancelled (an exception,
    such as a cancel, leaves nothing running)."""
    if threads <= 1:
        return _Inline()
    return _Pool(threads)


class _Pool(ThreadPoolExecutor):
    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True, cancel_futures=True)


def verify_pairs(
    upright: list[ItemFeatures],
    mirrored: list[ItemFeatures],
    pairs: Iterable[tuple[int, int]],
    threshold: float | None,
    keypoints: int = KEYPOINTS,
    check: Callable[[], None] = lambda: None,
    threads: int = 1,
    coarse: Coarse | None = None,
) -> tuple[dict[tuple[int, int], Scored], int]:
    """Scores of the pairs (i < j) that score above 0, i upright against j upright and
    mirrored, and how many pairs were verified. With a `threshold`, pairs that cannot reach it
    are not matched in full (module docstring). With `coarse`
    features, a second pass gives the pairs still apart (below the threshold; without one,
    below COARSE_MIN) their second chance; a pair keeps its better score.

    Items are verified ROUND at a time, on `threads` threads (the products, the matcher's
    array operations and RANSAC release the GIL); the answer does not depend on `threads`."""
    out: dict[tuple[int, int], Scored] = {}
    grouped = list(_pairs_by_item(pairs).items())
    # Small products: threads inside them only add overhead
    with BLAS.limit(limits=1), pool(threads) as workers:
        verified = _rounds(
            grouped,
            lambda i, c: (upright[i], c, upright, mirrored, threshold, keypoints),
            _verify_args,
            out,
            check,
            workers,
        )
        if coarse is not None:
            bar = COARSE_MIN if threshold is None else threshold
            rest = [
                (i, [j for j in c if (i, j) not in out or out[i, j].score < bar])
                for i, c in grouped
            ]
            _rounds(
                rest,
                lambda i, c: (coarse.upright[i], c, coarse),
                _second_args,
                out,
                check,
                workers,
            )
    return out, verified


def _second_args(args: tuple) -> list[tuple[int, Scored]]:
    return second_chance(*args)


def _rounds(
    grouped: list[tuple[int, list[int]]],
    make: Callable[[int, list[int]], tuple],
    run: Callable[[tuple], list[tuple[int, Scored]]],
    out: dict[tuple[int, int], Scored],
    check: Callable[[], None],
    workers: ThreadPoolExecutor | _Inline,
) -> int:
    """`run` on each item's candidates ROUND items at a time (a cancel is seen between
    rounds); each pair's better score goes into `out`. How many pairs were run."""
    verified = 0
    for start in range(0, len(grouped), ROUND):
        check()
        work = []
        for i, candidates in grouped[start : start + ROUND]:
            if candidates:
                verified += len(candidates)
                work.append((i, candidates))
        args = [make(i, c) for i, c in work]
        for (i, _), scored in zip(work, workers.map(run, args), strict=True):
            for j, found in scored:
                if (i, j) not in out or found.score > out[i, j].score:
                    out[(i, j)] = found
    return verified

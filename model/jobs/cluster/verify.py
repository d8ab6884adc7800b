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
- a pair whose two items are already joined by verified edges at or above the threshold is not
  verified: it could not change the families (single linkage). Not done with a cluster count,
  where every edge's score orders the merges.
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
# A coarse second chance's least score. Dev seed (pairs the fine check failed at 0.15): 0.15 ->
# 33 same-family pairs joined and 1 false, 0.3 -> 20 and 0
COARSE_MIN = 0.3
# The second chance's first pass, as the fine one's: on the dev seed every pair it joined had
# at least 7 matches among the strongest 48 coarse keypoints; 5 keeps 581 of 2,520 pairs
COARSE_PRESCREEN_KEYPOINTS = 48
COARSE_PRESCREEN_MATCHES = 5
# Items verified between two updates of the pairs already joined (and spread over the threads)
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
    within the block. Maxima rather than arg-maxima where possible: they vectorise better."""
    rows, blocks, width = sims.shape
    if rows == 0 or width < 2:
        return [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * blocks
    best = sims.argmax(axis=2)  # rows x blocks
    s1 = np.take_along_axis(sims, best[..., None], axis=2)[..., 0]
    column_best = sims.max(axis=0)  # blocks x columns
    mutual = s1 >= np.take_along_axis(column_best, best.T, axis=1).T
    np.put_along_axis(sims, best[..., None], -np.inf, axis=2)
    s2 = sims.max(axis=2)  # the second best (the best again where two columns tie)
    d1 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * s1))
    d2 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * s2))
    keep = (d1 < RATIO * d2) & mutual & (counts >= 2)[None]
    out = []
    for block in range(blocks):
        ia = np.flatnonzero(keep[:, block])
        out.append((ia, best[ia, block]))
    return out


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


class Joined:
    """Union-find over the items: which are already in one family by strong edges."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


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


def _most(found: list[tuple[np.ndarray, np.ndarray]], n: int) -> int:
    """Matches of candidate n in its better orientation (found holds upright, mirrored)."""
    return max(len(found[2 * n][0]), len(found[2 * n + 1][0]))


def _pairs_by_item(pairs: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for i, j in pairs:
        grouped.setdefault(i, []).append(j)
    return grouped


def _verify_item(
    a: ItemFeatures,
    candidates: list[int],
    upright: list[ItemFeatures],
    mirrored: list[ItemFeatures],
    threshold: float | None,
    keypoints: int,
    coarse: Coarse | None = None,
    coarse_a: ItemFeatures | None = None,
) -> list[tuple[int, Scored]]:
    """a (upright) against each candidate upright and mirrored: the candidates that score above
    0, with their score; then, with `coarse` features, the candidates not joined by the fine
    ones again on those (second_chance). Pure (no shared state): items run on several threads
    at once."""
    out = _verify_fine(a, candidates, upright, mirrored, threshold, keypoints)
    if coarse is None or coarse_a is None:
        return out
    # Without a threshold every pair gets the better of both checks
    bar = COARSE_MIN if threshold is None else threshold
    joined = {j for j, s in out if s.score >= bar}
    rest = [j for j in candidates if j not in joined]
    again = dict(second_chance(coarse_a, rest, coarse))
    if not again:
        return out
    merged = dict(out)
    for j, s in again.items():
        if j not in merged or s.score > merged[j].score:
            merged[j] = s
    return [(j, merged[j]) for j in candidates if j in merged]


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
    first = _match(a, sides, min(width, COARSE_PRESCREEN_KEYPOINTS))
    hopeful = [n for n in range(len(candidates)) if _most(first, n) >= COARSE_PRESCREEN_MATCHES]
    if not hopeful:
        return []
    chosen = [sides[2 * n + o] for n in hopeful for o in (0, 1)]
    found = _match(a, chosen, width)
    need = min_matches(COARSE_MIN)
    out = []
    for m, n in enumerate(hopeful):
        for o in sorted((0, 1), key=lambda o: -len(found[2 * m + o][0])):
            ia, ib = found[2 * m + o]
            if len(ia) < need:
                break
            value, _ = fit(a, chosen[2 * m + o], ia, ib, need)
            if value >= COARSE_MIN:
                out.append((candidates[n], Scored(value, bool(o))))
                break
    return out


def _verify_fine(
    a: ItemFeatures,
    candidates: list[int],
    upright: list[ItemFeatures],
    mirrored: list[ItemFeatures],
    threshold: float | None,
    keypoints: int,
) -> list[tuple[int, Scored]]:
    """The fine keypoints' check of a against each candidate (_verify_item)."""
    need = MIN_INLIERS if threshold is None else min_matches(threshold)
    sides = [side for j in candidates for side in (upright[j], mirrored[j])]
    # First pass on the strongest few keypoints: most unrelated pairs stop here
    hopeful = list(range(len(candidates)))
    if threshold is not None:
        coarse = _match(a, sides, min(PRESCREEN_KEYPOINTS, keypoints))
        hopeful = [n for n in hopeful if _most(coarse, n) >= PRESCREEN_MATCHES]
    if not hopeful:
        return []
    chosen = [sides[2 * n + o] for n in hopeful for o in (0, 1)]
    found = _match(a, chosen, keypoints)
    out = []
    for m, n in enumerate(hopeful):
        for o in sorted((0, 1), key=lambda o: -len(found[2 * m + o][0])):
            ia, ib = found[2 * m + o]
            if len(ia) < need:
                break
            value, _ = fit(a, chosen[2 * m + o], ia, ib)
            if value > 0:
                out.append((candidates[n], Scored(value, bool(o))))
                break
    return out


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
    or cannot change the families at it are skipped (module docstring).

    Items are verified ROUND at a time, on `threads` threads (the products, the matcher's
    array operations and RANSAC release the GIL). The pairs skipped as already joined are
    decided from the edges of the rounds before, so the answer does not depend on `threads`."""
    joined = Joined(len(upright)) if threshold is not None else None
    out: dict[tuple[int, int], Scored] = {}
    verified = 0
    grouped = list(_pairs_by_item(pairs).items())
    # Small products: threads inside them only add overhead
    with BLAS.limit(limits=1), pool(threads) as workers:
        for start in range(0, len(grouped), ROUND):
            check()
            work = []
            for i, candidates in grouped[start : start + ROUND]:
                if joined is not None:
                    candidates = [j for j in candidates if joined.find(i) != joined.find(j)]
                if candidates:
                    verified += len(candidates)
                    work.append((i, candidates))
            args = [
                (
                    upright[i],
                    c,
                    upright,
                    mirrored,
                    threshold,
                    keypoints,
                    coarse,
                    coarse and coarse.upright[i],
                )
                for i, c in work
            ]
            for (i, _), scored in zip(work, workers.map(_verify_args, args), strict=True):
                for j, found in scored:
                    out[(i, j)] = found
                    if joined is not None and found.score >= (threshold or 0.0):
                        joined.union(i, j)
    return out, verified

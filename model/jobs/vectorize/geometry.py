"""Classical diagram vectorization (OpenCV + numpy): ink -> circles and arcs -> lines.

1. Ink: the page divided by its own background (ink removed by a max filter on a small copy),
   thresholded; small blobs (letters, specks) dropped.
2. Circles and arcs: Hough gradient votes give candidate centres. Around each centre the ink is
   binned by radius and angle; a radius whose ring is inked over most angles is a circle, a
   long angular run is an arc. Several radii per centre, so concentric circles are found, which
   HoughCircles alone (one radius per centre) misses. Each is refitted by least squares.
3. Lines: the ink of the circles and arcs found is erased, the line segment detector (LSD) runs
   on what is left, and collinear fragments (both edges of a stroke, pieces cut by gaps and by
   crossings) are merged into one line each.
4. Lines, circles and arcs compete for the ink; each arc kept is then refitted, and its ends
   found again, on its own ink: what no other shape kept has on its centre line (a line's:
   all its stroke); an arc whose own ink is spread over its ring's band, not centred on it, is
   dropped (strung through pieces of other strokes).

Chosen by measurement on the synthetic benchmark (bench/vectorize.py, docs/vectorize.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

ANGLE_BINS = 180  # 2 degrees each


@dataclass(frozen=True)
class Thresholds:
    """The method's knobs (the job's params; the defaults are the measured best)."""

    ink_contrast: float = 0.22  # ink is this much darker than the paper around it
    min_blob: float = 0.03  # of the diagonal: shorter connected ink (letters) is dropped
    circle_coverage: float = 0.8  # ring inked over this share of its angles: a circle
    min_arc_deg: float = 35.0  # shortest arc reported
    min_radius: float = 0.02  # of the diagonal
    min_line: float = 0.04  # of the diagonal: shortest line reported
    line_support: float = 0.6  # share of a line's length that must be ink


@dataclass
class _Ink:
    mask: np.ndarray  # uint8 0/255, letters removed
    points: np.ndarray  # (n, 2) float32 x, y of ink pixels
    stroke: float  # typical stroke width (px)
    diag: float


def ink_mask(gray: np.ndarray, t: Thresholds) -> _Ink:
    h, w = gray.shape
    diag = math.hypot(w, h)
    small = cv2.resize(gray, (max(8, w // 8), max(8, h // 8)), interpolation=cv2.INTER_AREA)
    paper = cv2.dilate(small, np.ones((5, 5), np.uint8))  # ink is dark: a max filter removes it
    paper = cv2.GaussianBlur(paper, (0, 0), 2)
    paper = cv2.resize(paper, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    ratio = gray.astype(np.float32) / np.maximum(paper, 1)
    mask = (ratio < 1 - t.ink_contrast).astype(np.uint8) * 255
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    longest = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = longest >= t.min_blob * diag
    keep[0] = False
    mask = np.where(keep[labels], 255, 0).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    inside = dist[mask > 0]
    stroke = float(2 * np.percentile(inside, 80)) if inside.size else 2.0
    return _Ink(mask, np.stack([xs, ys], 1).astype(np.float32), max(1.5, stroke), diag)


CENTRE_SIDE = 300  # centres are voted for on a copy this size (the vote costs ~ pixels x radii)


def _centres(ink: _Ink, mask: np.ndarray, t: Thresholds) -> list[tuple[float, float]]:
    h, w = mask.shape
    k = min(1.0, CENTRE_SIDE / max(h, w))
    small = cv2.resize(mask, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), 1.0)
    diag = ink.diag * k
    found = cv2.HoughCircles(
        blurred,
        cv2.HOUGH_GRADIENT,
        dp=1,
        minDist=max(3.0, 0.02 * diag),
        param1=60,
        param2=15,
        minRadius=max(3, int(t.min_radius * diag)),
        maxRadius=int(0.6 * diag),
    )
    if found is None:
        return []
    return [(float(x) / k, float(y) / k) for x, y, _r in found[0][:MAX_CENTRES]]


MAX_CENTRES = 12


def _runs(occupied: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Circular runs of occupied angle bins (gaps up to max_gap bridged): (start, length)."""
    n = len(occupied)
    if occupied.all():
        return [(0, n)]
    if not occupied.any():
        return []
    idx = np.nonzero(occupied)[0]
    gaps = np.diff(np.concatenate([idx, [idx[0] + n]]))
    bridged = (gaps > 1) & (gaps <= max_gap + 1)
    # +1 where a bridged gap opens, -1 where it closes, on two turns of the ring (a gap may
    # wrap past bin 0); the running sum marks the bridged bins.
    cover = np.zeros(2 * n + 1, np.int32)
    np.add.at(cover, idx[bridged] + 1, 1)
    np.add.at(cover, idx[bridged] + gaps[bridged], -1)
    inside = np.cumsum(cover)[: 2 * n] > 0
    filled = occupied | inside[:n] | inside[n:]
    if filled.all():
        return [(0, n)]
    start = int(np.argmin(filled))  # an empty bin: runs do not wrap past it
    rolled = np.roll(filled, -start)
    edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
    begins, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [((int(b) + start) % n, int(e - b)) for b, e in zip(begins, ends, strict=True)]


def _trimmed(
    occupied: np.ndarray, start: int, length: int, solid: int | None = None
) -> tuple[int, int]:
    """A run without the stray ink bridged onto its ends (a crossing stroke a gap away): each
    end moves inwards to the first SOLID bins inked in a row."""
    n = len(occupied)
    if length >= n:
        return start, length
    k = solid or SOLID
    inked = occupied[(np.arange(length) + start) % n]
    full = np.convolve(inked, np.ones(k), mode="valid") == k
    if not full.any():
        return start, 0
    first = int(np.argmax(full))
    last = int(len(full) - 1 - np.argmax(full[::-1])) + k
    return (start + first) % n, last - first


SOLID = 8


def _fit_circle(pts: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares circle (Kasa) through points."""
    if len(pts) < 8:
        return None
    x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    a = np.stack([x, y, np.ones_like(x)], 1)
    b = x * x + y * y
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    r2 = sol[2] + cx * cx + cy * cy
    if r2 <= 0:
        return None
    return _refined(x, y, cx, cy, math.sqrt(r2))


def _refined(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float
) -> tuple[float, float, float]:
    """Gauss-Newton steps on the points' distances to the circle: the algebraic (Kasa) fit
    shrinks the radius of a short, noisy arc, which the geometric one does not."""
    for _ in range(GEOMETRIC_STEPS):
        dx, dy = x - cx, y - cy
        d = np.maximum(np.hypot(dx, dy), 1e-9)
        jac = np.stack([-dx / d, -dy / d, -np.ones_like(d)], 1)
        try:  # the normal equations: a 3x3 solve, much cheaper than lstsq's SVD
            step = np.linalg.solve(jac.T @ jac, jac.T @ (r - d))
        except np.linalg.LinAlgError:
            break
        cx, cy, r = cx + step[0], cy + step[1], r + step[2]
        if abs(step).max() < 0.05:
            break
    return float(cx), float(cy), float(abs(r))


GEOMETRIC_STEPS = 5


def _polar(points: np.ndarray, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    d = points - np.array([cx, cy], np.float32)
    dist = np.hypot(d[:, 0], d[:, 1])
    angle = (np.degrees(np.arctan2(d[:, 1], d[:, 0])) + 360) % 360
    return dist, angle


@dataclass
class _Candidate:
    shape: dict
    members: np.ndarray  # indices of the ink points it explains
    fill: float  # share of its angular run actually inked


def _ring_band(ink: _Ink) -> float:
    """How far (px) from a ring its ink may lie: half a stroke and a little wobble."""
    return max(2.5, ink.stroke / 2 + 2)


def _ring_bins(ink: _Ink, r: float, gap: float) -> tuple[int, int]:
    """Angular bins of the ring of radius r, each about a stroke long (a gap or a stray crossing
    reads as what it is), and how many bins a gap of `gap` of the diagonal spans (2 at least)."""
    n_bins = int(np.clip(2 * math.pi * r / max(3.0, ink.stroke), 90, 720))
    return n_bins, max(2, int(gap * ink.diag / (2 * math.pi * r) * n_bins))


def _close_fit(
    fit: tuple[float, float, float], cx: float, cy: float, r: float, band: float
) -> bool:
    """Whether a refit stays near the circle it refines (a short arc's fit can run away)."""
    nx, ny, nr = fit
    return max(math.hypot(nx - cx, ny - cy), abs(nr - r)) <= 0.1 * r + band


def _shape_at(
    ink: _Ink, pool: np.ndarray, cx: float, cy: float, r: float, band: float, t: Thresholds
) -> _Candidate | None:
    """The circle or the longest arc of radius r around (cx, cy), refitted, or None.
    `pool`: indices of the ink points near enough to matter."""
    points = ink.points[pool]
    for attempt in range(3):
        dist, angle = _polar(points, cx, cy)
        near = np.abs(dist - r) <= band
        if near.sum() < 10:
            return None
        n_bins, max_gap = _ring_bins(ink, r, MAX_GAP)
        bins = (angle * n_bins / 360).astype(int) % n_bins
        occupied = np.bincount(bins[near], minlength=n_bins) > 0
        runs = _runs(occupied, max_gap=max_gap)
        if not runs:
            return None
        start, length = _trimmed(occupied, *max(runs, key=lambda run: run[1]))
        span = length * 360 / n_bins
        if span < t.min_arc_deg:
            return None
        in_run = ((bins - start) % n_bins) < length
        if attempt == 2:
            break
        fit = _fit_circle(points[near & in_run])
        if fit is None:
            break
        if not _close_fit(fit, cx, cy, r, band):
            break  # a short arc's fit can run away: keep the voted one
        cx, cy, r = fit
    members = pool[near & in_run]
    if not _round_enough(ink.points[members], cx, cy, r, ink.stroke):
        return None
    run_bins = (np.arange(length) + start) % n_bins
    fill = float(occupied[run_bins].mean())
    coverage = float(occupied.mean())
    if span >= 360 * t.circle_coverage or coverage >= t.circle_coverage:
        shape = {"kind": "circle", "center": [cx, cy], "radius": r, "confidence": coverage}
        return _Candidate(shape, members, coverage)
    a0 = start * 360 / n_bins
    shape = {
        "kind": "arc",
        "center": [cx, cy],
        "radius": r,
        "start_deg": a0 % 360,
        "end_deg": (a0 + span) % 360,
        "confidence": fill,
    }
    return _Candidate(shape, members, fill)


def _round_enough(pts: np.ndarray, cx: float, cy: float, r: float, stroke: float) -> bool:
    """Ink that a circle fits tightly and a straight line does not (a straight stroke is an
    arc of a huge circle too)."""
    if len(pts) < 10:
        return False
    circle_rms = float(np.sqrt(np.mean((np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) ** 2)))
    centred = pts - pts.mean(0)
    line_rms = float(np.sqrt(max(0.0, np.linalg.eigvalsh(np.cov(centred.T))[0])))
    return circle_rms <= 0.3 * stroke + 1.2 and line_rms > 2 * circle_rms + 1


def _radii(dist: np.ndarray, angle: np.ndarray, ink: _Ink, t: Thresholds) -> list[float]:
    """Radii around a centre where a ring of ink spreads over many angles."""
    r_max = int(min(dist.max(initial=0), 0.7 * ink.diag)) + 2
    if r_max < 5:
        return []
    hist = np.zeros((r_max + 1, ANGLE_BINS), np.uint8)
    hist[
        np.minimum(dist.astype(int), r_max), (angle * ANGLE_BINS / 360).astype(int) % ANGLE_BINS
    ] = 1
    band = int(max(2, ink.stroke / 2 + 1))
    spread = cv2.dilate(hist, np.ones((2 * band + 1, 1), np.uint8))  # along the radius
    coverage = spread.mean(axis=1)
    low = t.min_arc_deg / 360
    found = []
    lo = int(t.min_radius * ink.diag)
    window = max(1, int(t.min_arc_deg * ANGLE_BINS / 360))
    for r in range(lo, r_max):
        c = coverage[r]
        peak = c >= low and c >= coverage[max(0, r - 2 * band) : r + 2 * band + 1].max()
        if peak and (not found or r - found[-1] > band) and _dense_run(spread[r], window):
            found.append(float(r))
    return found


def _dense_run(row: np.ndarray, window: int) -> bool:
    """Whether some `window` consecutive angle bins (circularly) are mostly inked: ink
    scattered over the ring (strokes crossing it) makes no arc, and is not worth analysing."""
    wrapped = np.concatenate([row, row[: window - 1]]).astype(np.int32)
    sums = np.convolve(wrapped, np.ones(window, np.int32), mode="valid")
    return bool(sums.max() >= RUN_DENSITY * window)


RUN_DENSITY = 0.7


def _greedy(candidates: list[_Candidate], n_points: int) -> list[_Candidate]:
    """Largest first, each only if most of its ink is not explained by one accepted before."""
    claimed = np.zeros(n_points, bool)
    kept = []
    for c in sorted(candidates, key=_weight, reverse=True):
        if len(c.members) == 0 or float((~claimed[c.members]).mean()) < MIN_FRESH:
            continue
        claimed[c.members] = True
        kept.append(c)
    return kept


def _weight(c: _Candidate) -> float:
    """The ink a candidate explains, lines weighted up: a false arc strung through several
    straight strokes explains more ink than any one of them."""
    return len(c.members) * (LINE_WEIGHT if c.shape["kind"] == "line" else 1.0)


LINE_WEIGHT = 1.5


def round_candidates(ink: _Ink, t: Thresholds) -> list[_Candidate]:
    """Circle and arc candidates around every voted centre, in rounds: the big circles' votes
    drown the centres of small arcs, which a vote on the ink left unexplained finds."""
    band = _ring_band(ink)
    claimed = np.zeros(len(ink.points), bool)
    everything: list[_Candidate] = []
    mask = ink.mask
    for _round in range(ROUNDS):
        candidates: list[_Candidate] = []
        seen = _Rings(band)
        for cx, cy in _centres(ink, mask, t):
            dist, angle = _polar(ink.points, cx, cy)
            free = ~claimed
            for r in _radii(dist[free], angle[free], ink, t):
                if seen.has(cx, cy, r):
                    continue  # a neighbouring centre's vote for a ring already analysed
                seen.add(cx, cy, r)
                pool = np.nonzero(free & (np.abs(dist - r) <= band + 0.1 * r))[0]
                found = _shape_at(ink, pool, cx, cy, r, band, t)
                if found is not None:
                    seen.add(*found.shape["center"], found.shape["radius"])
                if found is None or found.shape["radius"] < t.min_radius * ink.diag:
                    continue
                if found.fill >= MIN_FILL:
                    candidates.append(found)
        everything += candidates
        accepted = _greedy(candidates, len(ink.points))
        if not accepted:
            break
        for c in accepted:
            claimed[c.members] = True
        mask = _without(ink, claimed)
    return everything


class _Rings:
    """Rings (centre, radius) already analysed: the votes put several centres within a few
    pixels of one true centre, each of which would find the same rings again."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.rings = np.zeros((0, 3))

    def has(self, cx: float, cy: float, r: float) -> bool:
        if len(self.rings) == 0:
            return False
        return bool((np.abs(self.rings - (cx, cy, r)).max(axis=1) <= self.tolerance).any())

    def add(self, cx: float, cy: float, r: float) -> None:
        self.rings = np.vstack([self.rings, (cx, cy, r)])


def _without(ink: _Ink, claimed: np.ndarray) -> np.ndarray:
    mask = ink.mask.copy()
    xy = ink.points[claimed].astype(int)
    mask[xy[:, 1], xy[:, 0]] = 0
    return mask


ROUNDS = 2
MAX_GAP = 0.03  # of the diagonal: longest gap bridged along a ring
MIN_FILL = 0.85
MIN_FRESH = 0.6


def _merge_lines(segs: np.ndarray, ink: _Ink, t: Thresholds) -> list[_Candidate]:
    """Greedy merge of collinear fragments, longest first."""
    if segs is None or len(segs) == 0:
        return []
    segs = segs.reshape(-1, 4).astype(np.float64)
    lengths = np.hypot(segs[:, 2] - segs[:, 0], segs[:, 3] - segs[:, 1])
    keep = lengths >= 3
    segs, lengths = segs[keep], lengths[keep]
    order = np.argsort(-lengths)
    used = np.zeros(len(segs), bool)
    offset_tol = max(3.0, ink.stroke) + 1.5
    gap_tol = MERGE_GAP * ink.diag
    lines = []
    p0s, p1s = segs[:, :2], segs[:, 2:]
    # A short fragment's direction is known only to about a stroke over its length.
    angle_cos = np.cos(np.maximum(np.radians(3), np.arctan2(MERGE_SHORT * ink.stroke, lengths)))
    for i in order:
        if used[i]:
            continue
        group = [i]
        used[i] = True
        a, b = p0s[i], p1s[i]
        extended = False
        for _ in range(20):  # grow: each pass may bring fragments further along
            d = (b - a) / (np.linalg.norm(b - a) + 1e-9)
            n = np.array([-d[1], d[0]])
            off0 = np.abs((p0s - a) @ n)
            off1 = np.abs((p1s - a) @ n)
            t0, t1 = (p0s - a) @ d, (p1s - a) @ d
            lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
            span_lo, span_hi = 0.0, float(np.linalg.norm(b - a))
            gap = np.maximum(lo - span_hi, span_lo - hi)
            seg_dir = (p1s - p0s) / (lengths[:, None] + 1e-9)
            parallel = np.abs(seg_dir @ d) >= angle_cos
            join = (~used) & parallel & (off0 <= offset_tol) & (off1 <= offset_tol)
            join &= gap <= gap_tol
            new = np.nonzero(join)[0]
            if len(new) == 0:
                if extended:
                    break
                # Extended along its ink (through a crossing LSD broke it at), the line may
                # reach fragments of itself beyond.
                a, b = _extend(ink.mask, b, a, ink.stroke), _extend(ink.mask, a, b, ink.stroke)
                extended = True
                continue
            extended = False
            used[new] = True
            group.extend(new.tolist())
            pts = np.concatenate([p0s[group], p1s[group]])
            w = np.concatenate([lengths[group], lengths[group]])
            mean = (pts * w[:, None]).sum(0) / w.sum()
            cov = np.cov((pts - mean).T, aweights=w)
            direction = np.linalg.eigh(cov)[1][:, -1]
            proj = (pts - mean) @ direction
            a, b = mean + proj.min() * direction, mean + proj.max() * direction
        if not extended:
            a, b = _extend(ink.mask, b, a, ink.stroke), _extend(ink.mask, a, b, ink.stroke)
        length = float(np.linalg.norm(b - a))
        if length < t.min_line * ink.diag:
            continue
        support = _support(ink.mask, a, b, ink.stroke)
        if support >= t.line_support and not _bowed(ink.mask, a, b, ink.stroke):
            shape = {"kind": "line", "p0": a.tolist(), "p1": b.tolist(), "confidence": support}
            lines.append(_Candidate(shape, _near_segment(ink, a, b), support))
    return lines


MERGE_GAP = 0.03  # of the diagonal: longest gap between collinear fragments merged
MERGE_SHORT = 0.5  # strokes: a fragment's direction error over its length
EXTEND_REACH = 1  # px around the line's axis where ink counts as its going on


def _extend(mask: np.ndarray, a: np.ndarray, b: np.ndarray, stroke: float) -> np.ndarray:
    """b moved outwards along a->b while the line's own ink goes on (LSD stops short of
    junctions and of the ink it shares with a circle). It stops where the ink breaks (crossing a
    gap, even a pen gap of a couple of strokes, ran lines on past their true end more often than
    it joined them) and where the ink on the axis, a stroke wide, drifts off it: another stroke
    met at a shallow angle (or a circle met near its tangent) led lines on along it."""
    u = (b - a) / (np.linalg.norm(b - a) + 1e-9)
    reach = math.ceil(stroke) + 2  # the cross-section: a stroke and a little each side
    longest = int(0.2 * math.hypot(*mask.shape))
    for far in (min(EXTEND_FIRST, longest), longest):  # most ends are near: look there first
        ink = _sections(mask, b, u, np.arange(-EXTEND_BACK, far), reach + 1)
        # Widened by EXTEND_REACH px each side (symmetrically: the run's centre stays put).
        ink = ink[:, :-2] | ink[:, 1:-1] | ink[:, 2:]
        if not ink[:, reach].all():
            break
    mid = reach
    left = np.cumprod(ink[:, mid::-1], axis=1).sum(1)  # inked px from the axis outwards
    right = np.cumprod(ink[:, mid:], axis=1).sum(1)
    centre = (right - left) / 2  # of the inked run through the axis
    width = right + left - 1 - 2 * EXTEND_REACH
    stroke_like = width <= EXTEND_WIDE * stroke  # wider: a crossing or a junction, unclear
    behind = centre[: EXTEND_BACK + 1][
        stroke_like[: EXTEND_BACK + 1] & (left[: EXTEND_BACK + 1] > 0)
    ]
    ref = float(np.median(behind)) if len(behind) else 0.0
    drift = np.abs(centre - ref) > max(EXTEND_DRIFT, EXTEND_DRIFT_STROKE * stroke)
    inked = left[EXTEND_BACK + 1 :] > 0
    own = (stroke_like & ~drift)[EXTEND_BACK + 1 :]  # the line's own stroke, centred on it
    unbroken = int(np.argmin(inked)) if not inked.all() else len(inked)
    ends = np.nonzero(own[:unbroken])[0]
    last = int(ends[-1]) + 1 if len(ends) else 0
    # Past its own stroke's last sign, ink on the axis is a junction: half of it (a stroke at
    # most) is the line's, as a line ending on a crossing stroke ends at its middle. (None of
    # it past a shallow-angle meeting, more than two strokes long: tuning F1 +0.003, held-out
    # -0.002.)
    return b + u * (last + min((unbroken - last) / 2, stroke))


EXTEND_FIRST = 32  # px looked at first for the end; further only if the ink goes on
EXTEND_BACK = 4  # px behind the end where the stroke's own centre is measured
EXTEND_WIDE = 1.6  # a run through the axis wider than this many strokes: a crossing
EXTEND_DRIFT = 1.0  # px: the run's centre this far off the stroke's: another stroke
EXTEND_DRIFT_STROKE = 0.25  # ... or this share of a stroke, if more


def _sections(
    mask: np.ndarray, origin: np.ndarray, u: np.ndarray, steps: np.ndarray, reach: int
) -> np.ndarray:
    """Ink across the line origin + t u at each step t: (steps, 2 reach + 1) bools, offsets
    -reach..reach along the normal (outside the image: no ink)."""
    across = np.arange(-reach, reach + 1)
    normal = np.array([-u[1], u[0]])
    pts = origin + steps[:, None, None] * u + across[None, :, None] * normal
    xs, ys = np.rint(pts[..., 0]).astype(int), np.rint(pts[..., 1]).astype(int)
    h, w = mask.shape
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    ink = np.zeros(xs.shape, bool)
    ink[inside] = mask[ys[inside], xs[inside]] > 0
    return ink


def _bowed(mask: np.ndarray, a: np.ndarray, b: np.ndarray, stroke: float) -> bool:
    """Whether the ink along a..b bows like a piece of a circle rather than a straight stroke:
    a chord that LSD fits to an arc the circle search missed. The stroke's centre across the
    line (where the section shows one stroke only) is fitted by a parabola; its sagitta is
    what a circle of under CHORD_RADIUS lengths gives, and more than wobble does."""
    length = float(np.linalg.norm(b - a))
    u = (b - a) / (length + 1e-9)
    reach = math.ceil(stroke) + 3
    steps = np.arange(0.0, length, 1.0)
    ink = _sections(mask, a, u, steps, reach)
    count = ink.sum(1)
    one = (count > 0) & (count <= EXTEND_WIDE * stroke) & ~ink[:, 0] & ~ink[:, -1]
    if one.sum() < max(8, 0.3 * len(steps)):
        return False
    centre = (ink[one] * np.arange(-reach, reach + 1)).sum(1) / count[one]
    x = steps[one] / length - 0.5
    sagitta = abs(np.polyfit(x, centre, 2)[0]) / 4  # the parabola's rise over the half length
    return sagitta > max(BOW_MIN_PX, length / (8 * CHORD_RADIUS))


BOW_MIN_PX = 1.0  # wobble of a straight stroke stays under this along a short line
CHORD_RADIUS = 5.5  # lengths: straight lines on the tuning seeds bowed as circles of 7 or more


def _near_segment(ink: _Ink, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices of the ink points within half a stroke (and a little) of the segment a..b."""
    d = b - a
    length = float(np.linalg.norm(d))
    u = d / (length + 1e-9)
    rel = ink.points - a.astype(np.float32)
    along = rel @ u.astype(np.float32)
    across = np.abs(rel @ np.array([-u[1], u[0]], np.float32))
    return np.nonzero((across <= ink.stroke / 2 + 1.5) & (along >= -2) & (along <= length + 2))[0]


def _support(mask: np.ndarray, a: np.ndarray, b: np.ndarray, stroke: float) -> float:
    """Share of points along a..b that have ink within about a stroke width."""
    n = max(2, int(np.linalg.norm(b - a) / 2))
    pts = np.linspace(a, b, n)
    h, w = mask.shape
    xs = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    return float((mask[ys, xs] > 0).mean())


def vectorize(
    gray: np.ndarray, thresholds: Thresholds, kinds: frozenset[str] | None = None
) -> list[dict]:
    """Primitives in the given image's pixels (kinds: those to report; all by default).
    Circles and arcs are found first; lines on the ink the circles leave; then lines, circles
    and arcs compete for the ink (largest first), which drops arcs that only string together
    pieces of lines and circles."""
    kinds = kinds or frozenset({"line", "circle", "arc"})
    ink = ink_mask(gray, thresholds)
    if len(ink.points) == 0:
        return []
    rounds = round_candidates(ink, thresholds)
    claimed = np.zeros(len(ink.points), bool)
    for c in _greedy(rounds, len(ink.points)):
        if c.shape["kind"] == "circle":
            claimed[c.members] = True
    lsd = cv2.createLineSegmentDetector()
    segs = lsd.detect(cv2.GaussianBlur(_without(ink, claimed), (0, 0), 1.0))[0]
    lines = _merge_lines(segs, ink, thresholds)
    chosen = _greedy(rounds + lines, len(ink.points))
    claimed = np.zeros(len(ink.points), bool)
    for c in chosen:
        claimed[c.members] = True
    leftover = _leftover_candidates(ink, claimed, thresholds)
    if leftover:
        chosen = _greedy(rounds + lines + leftover, len(ink.points))
    chosen = _own_ends(ink, chosen, thresholds)
    return [c.shape for c in chosen if c.shape["kind"] in kinds]


def _own_ends(ink: _Ink, chosen: list[_Candidate], t: Thresholds) -> list[_Candidate]:
    """Each arc refitted and its ends found again on its own ink: the ink along its ring that
    no other chosen shape explains. Before, a crossing or touching stroke a bridged gap past an
    arc's end ran it on (ended only by 8 solid bins of ink), the short tail of an arc past a
    crossing, too short to be solid, was cut, and crossing strokes pulled the fit."""
    cores = [_core(ink, c) for c in chosen]
    claims = np.zeros(len(ink.points), np.int32)
    for core in cores:
        claims[core] += 1
    out = []
    for c, core in zip(chosen, cores, strict=True):
        if c.shape["kind"] == "arc":
            own = claims.copy()
            own[core] -= 1
            c = _own_arc(ink, c, own == 0, t)
            if _scattered(ink, c.shape, own == 0):
                continue
        out.append(c)
    return out


def _scattered(ink: _Ink, shape: dict, free: np.ndarray) -> bool:
    """Whether an arc's own ink (free, within the ring's band, over its span) lies spread over
    the band rather than centred on its ring: an arc strung through pieces of other strokes
    (crossings, letters), not a stroke of its own. On the tuning seeds true arcs' own ink lay
    at most 0.41 strokes (rms) from their ring, most such false arcs' 0.42-0.58."""
    (cx, cy), r = shape["center"], shape["radius"]
    span = (shape["end_deg"] - shape["start_deg"]) % 360
    dist, angle = _polar(ink.points, cx, cy)
    off = dist - r
    own = free & (np.abs(off) <= _ring_band(ink)) & (((angle - shape["start_deg"]) % 360) <= span)
    if own.sum() < 3:
        return True
    return float(np.sqrt(np.mean(off[own] ** 2))) > SCATTERED * ink.stroke


SCATTERED = 0.42  # strokes: rms distance of an arc's own ink from its ring


def _core(ink: _Ink, c: _Candidate) -> np.ndarray:
    """The members of a shape within CORE strokes of its centre line: where another shape
    runs alongside an arc (touching circles), only the ink right on it is taken as its."""
    pts = ink.points[c.members].astype(np.float64)
    if c.shape["kind"] == "line":
        a, b = np.array(c.shape["p0"]), np.array(c.shape["p1"])
        u = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        off = np.abs((pts - a) @ np.array([-u[1], u[0]]))
        return c.members[off <= CORE_LINE * ink.stroke + 0.5]
    (cx, cy), r = c.shape["center"], c.shape["radius"]
    off = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
    return c.members[off <= CORE * ink.stroke + 0.5]


CORE = 0.5  # strokes (+0.5 px) from its centre line: the ink that is a shape's alone
# A line only crosses an arc (never runs alongside it as a circle may): all of its stroke is
# its own, up to the thick strokes' edges (widths vary about the typical stroke), which left
# free ran arcs on past their end through the crossing.
CORE_LINE = 0.75


def _own_arc(ink: _Ink, c: _Candidate, free: np.ndarray, t: Thresholds) -> _Candidate:
    """An arc refitted on the free ink (a mask of ink points) of its span, and given the ends
    of the run of free ink along its ring that overlaps it most."""
    shape = c.shape
    band = _ring_band(ink)
    for _ in range(OWN_ROUNDS):
        (cx, cy), r = shape["center"], shape["radius"]
        span = (shape["end_deg"] - shape["start_deg"]) % 360
        dist, angle = _polar(ink.points, cx, cy)
        near = (np.abs(dist - r) <= band) & free
        fit = _fit_circle(ink.points[near & (((angle - shape["start_deg"]) % 360) <= span)])
        if fit is not None and _close_fit(fit, cx, cy, r, band):
            cx, cy, r = fit
            dist, angle = _polar(ink.points, cx, cy)
            near = (np.abs(dist - r) <= band) & free
        n_bins, max_gap = _ring_bins(ink, r, OWN_GAP)
        bins = (angle[near] * n_bins / 360).astype(int) % n_bins
        occupied = np.bincount(bins, minlength=n_bins) > 0
        was = np.zeros(n_bins, bool)
        was[
            (int(shape["start_deg"] * n_bins / 360) + np.arange(int(span * n_bins / 360))) % n_bins
        ] = True
        runs = [
            (int(was[(start + np.arange(length)) % n_bins].sum()), start, length)
            for start, length in _runs(occupied, max_gap)
        ]
        if not runs or max(runs)[0] == 0:
            break
        _shared, start, length = max(runs)
        start, length = _trimmed(occupied, start, length, solid=OWN_SOLID)
        if length * 360 / n_bins < t.min_arc_deg or length >= n_bins:
            break
        a = start * 360 / n_bins
        shape = dict(
            shape,
            center=[cx, cy],
            radius=r,
            start_deg=a % 360,
            end_deg=(a + length * 360 / n_bins) % 360,
        )
    return _Candidate(shape, c.members, c.fill)


OWN_SOLID = 3  # bins inked in a row where an arc's own ink ends
OWN_GAP = 0.03  # of the diagonal: longest gap in an arc's own ink bridged
OWN_ROUNDS = 2  # refit, new ends, refit on them, their ends


def _leftover_candidates(ink: _Ink, claimed: np.ndarray, t: Thresholds) -> list[_Candidate]:
    """Arcs the votes missed (small ones crossed by other strokes, whose centres drown in the
    big circles' votes): circles through three nearby points of the ink nothing explains yet
    (RANSAC), the best supported grown along their ring over all the ink, crossings included."""
    free = ink.points[~claimed]
    if len(free) < LEFTOVER_MIN_POINTS:
        return []
    band = _ring_band(ink)
    r_min, r_max = t.min_radius * ink.diag, 0.6 * ink.diag
    pieces = _piece_circles(ink, claimed)
    circles = np.vstack([pieces, _local_circles(free, ink.diag, np.random.default_rng(0))])
    keep = (circles[:, 2] >= r_min) & (circles[:, 2] <= r_max)
    circles, first = circles[keep], keep[: len(pieces)].sum()
    if len(circles) == 0:
        return []
    d = np.hypot(free[None, :, 0] - circles[:, None, 0], free[None, :, 1] - circles[:, None, 1])
    support = (np.abs(d - circles[:, 2:3]) <= band).sum(1)
    # The pieces' circles first (each a curved stretch's own fit), then RANSAC's.
    support[:first] += len(free)
    found: list[_Candidate] = []
    tried: list[np.ndarray] = []
    for i in np.argsort(-support):
        if support[i] < LEFTOVER_MIN_POINTS or len(tried) >= LEFTOVER_TRIES:
            break
        cx, cy, r = circles[i]
        if any(np.abs(c - circles[i]).max() <= band for c in tried):
            continue  # the same circle again
        tried.append(circles[i])
        dist, _angle = _polar(ink.points, cx, cy)
        pool = np.nonzero(np.abs(dist - r) <= band + 0.1 * r)[0]
        shape = _shape_at(ink, pool, float(cx), float(cy), float(r), band, t)
        if shape is not None and shape.fill >= MIN_FILL and shape.shape["radius"] >= r_min:
            found.append(shape)
    return found


def _piece_circles(ink: _Ink, claimed: np.ndarray) -> np.ndarray:
    """(k, 3) circles fitted to the connected pieces of the ink nothing explains yet that are
    round (a circle fits them tightly, a line does not): an arc crossed by other strokes is
    left, once they are claimed, as curved pieces between the crossings, each of which gives
    its centre, where the votes (drowned by bigger circles) and RANSAC's triples miss it."""
    mask = _without(ink, claimed)
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    xy = ink.points.astype(int)
    label = labels[xy[:, 1], xy[:, 0]]
    big = np.nonzero(stats[:, cv2.CC_STAT_AREA] >= LEFTOVER_MIN_POINTS)[0]
    out = []
    for k in big[big > 0][:PIECES_MAX]:
        pts = ink.points[label == k]
        fit = _fit_circle(pts)
        if fit is not None and _round_enough(pts, *fit, ink.stroke):
            out.append(fit)
    return np.array(out, np.float64).reshape(-1, 3)


PIECES_MAX = 200  # pieces fitted at most (CPU)


def _local_circles(points: np.ndarray, diag: float, rng: np.random.Generator) -> np.ndarray:
    """(k, 3) circles x, y, r through triples of points: a random point and two others on
    either side of it, a random short distance away (so the three lie on one stroke)."""
    n = len(points)
    a = points[rng.integers(0, n, LEFTOVER_SAMPLES)]
    reach = rng.uniform(0.03, 0.1, LEFTOVER_SAMPLES) * diag
    out = []
    for p, L in zip(a, reach, strict=True):
        d = np.hypot(points[:, 0] - p[0], points[:, 1] - p[1])
        ring = np.nonzero((d >= L / 2) & (d <= L))[0]
        if len(ring) < 2:
            continue
        b = points[ring[rng.integers(0, len(ring))]]
        far = points[ring][np.hypot(*(points[ring] - b).T) >= L]  # the other side of p
        if len(far) == 0:
            continue
        c = far[rng.integers(0, len(far))]
        circle = _circle_through(p, b, c)
        if circle is not None:
            out.append(circle)
    return np.array(out, np.float64).reshape(-1, 3)


def _circle_through(
    a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> tuple[float, float, float] | None:
    """The circle through three points, None when they are (nearly) collinear."""
    ax, ay = float(a[0]), float(a[1])
    bx, by, cx, cy = float(b[0]) - ax, float(b[1]) - ay, float(c[0]) - ax, float(c[1]) - ay
    det = 2 * (bx * cy - by * cx)
    if abs(det) < 1e-6:
        return None
    b2, c2 = bx * bx + by * by, cx * cx + cy * cy
    ux, uy = (cy * b2 - by * c2) / det, (bx * c2 - cx * b2) / det
    return ax + ux, ay + uy, math.hypot(ux, uy)


LEFTOVER_SAMPLES = 300
LEFTOVER_TRIES = 20
LEFTOVER_MIN_POINTS = 30

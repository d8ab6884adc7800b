"""Precision, recall and F1 of found primitives against ground truth, per kind, at the issue's
tolerances (issue 21), with one-to-one matching (a found shape counts for one true shape at most):

- line: both endpoints within 1 % of the image diagonal, in either order;
- circle: centre within 1 % of the diagonal, radius within max(3 px, 5 %);
- arc: as a circle, and both end angles within 10 degrees.

numpy-free and light: the bench and the fast tests use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

KINDS = ("line", "circle", "arc")
CENTER_TOL = 0.01  # of the diagonal
RADIUS_TOL = 0.05  # of the true radius, at least RADIUS_MIN_PX
RADIUS_MIN_PX = 3.0
ANGLE_TOL_DEG = 10.0


def angle_gap(a: float, b: float) -> float:
    """The smaller angle between two directions, in degrees."""
    d = abs(a - b) % 360
    return min(d, 360 - d)


def _line_ok(found: dict, true: dict, tol: float) -> bool:
    a, b = found["p0"], found["p1"]
    c, d = true["p0"], true["p1"]
    same = math.dist(a, c) <= tol and math.dist(b, d) <= tol
    return same or (math.dist(a, d) <= tol and math.dist(b, c) <= tol)


def _circle_ok(found: dict, true: dict, tol: float) -> bool:
    radius_tol = max(RADIUS_MIN_PX, RADIUS_TOL * true["radius"])
    return (
        math.dist(found["center"], true["center"]) <= tol
        and abs(found["radius"] - true["radius"]) <= radius_tol
    )


def _arc_ok(found: dict, true: dict, tol: float) -> bool:
    return (
        _circle_ok(found, true, tol)
        and angle_gap(found["start_deg"], true["start_deg"]) <= ANGLE_TOL_DEG
        and angle_gap(found["end_deg"], true["end_deg"]) <= ANGLE_TOL_DEG
    )


MATCHERS: dict[str, Callable[[dict, dict, float], bool]] = {
    "line": _line_ok,
    "circle": _circle_ok,
    "arc": _arc_ok,
}


def _max_matching(edges: list[list[int]], n_true: int) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths; the sets are small)."""
    owner = [-1] * n_true

    def augment(i: int, seen: list[bool]) -> bool:
        for j in edges[i]:
            if seen[j]:
                continue
            seen[j] = True
            if owner[j] < 0 or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return sum(augment(i, [False] * n_true) for i in range(len(edges)))


@dataclass
class Counts:
    matched: int = 0
    found: int = 0
    true: int = 0

    def add(self, other: Counts) -> None:
        self.matched += other.matched
        self.found += other.found
        self.true += other.true

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.true if self.true else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def score_image(
    found: Iterable[dict], true: Iterable[dict], width: int, height: int
) -> dict[str, Counts]:
    """Matched/found/true counts per kind for one image."""
    tol = CENTER_TOL * math.hypot(width, height)
    found, true = list(found), list(true)
    out = {}
    for kind in KINDS:
        f = [p for p in found if p["kind"] == kind]
        t = [p for p in true if p["kind"] == kind]
        edges = [[j for j, b in enumerate(t) if MATCHERS[kind](a, b, tol)] for a in f]
        out[kind] = Counts(_max_matching(edges, len(t)), len(f), len(t))
    return out


def total(per_image: Iterable[dict[str, Counts]]) -> dict[str, Counts]:
    sums = {kind: Counts() for kind in KINDS}
    for counts in per_image:
        for kind in KINDS:
            sums[kind].add(counts[kind])
    return sums


def table(sums: dict[str, Counts]) -> str:
    """The F1 table as Markdown."""
    rows = [
        "| kind | true | found | matched | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        c = sums[kind]
        rows.append(
            f"| {kind} | {c.true} | {c.found} | {c.matched} | {c.precision:.3f} | "
            f"{c.recall:.3f} | {c.f1:.3f} |"
        )
    return "\n".join(rows)

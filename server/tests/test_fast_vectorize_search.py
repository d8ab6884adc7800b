"""The vectorize method's search shortcuts and line ends: rings analysed once, scattered ink
not analysed as an arc, lines weighted up against arcs, and lines extended only along
unbroken ink."""

from __future__ import annotations

import numpy as np
import pytest

from model.jobs.vectorize.geometry import (
    _Candidate,
    _dense_run,
    _extend,
    _greedy,
    _Rings,
    _runs,
)


def test_a_ring_near_one_analysed_is_seen() -> None:
    rings = _Rings(tolerance=3.0)
    assert not rings.has(100, 100, 50)
    rings.add(100, 100, 50)
    assert rings.has(102, 99, 52)
    assert not rings.has(100, 100, 56)  # a concentric ring
    assert not rings.has(105, 100, 50)  # a neighbouring centre


def test_a_contiguous_run_of_ink_on_a_ring_is_dense() -> None:
    row = np.zeros(180, np.uint8)
    row[170:] = 1
    row[:10] = 1  # 20 bins in a row, across bin 0
    assert _dense_run(row, 17)


def test_ink_scattered_over_a_ring_is_not_dense() -> None:
    row = np.zeros(180, np.uint8)
    row[::3] = 1  # a third of the angles, evenly spread: strokes crossing the ring
    assert row.mean() >= 35 / 360  # what the radius vote alone lets through
    assert not _dense_run(row, 17)


@pytest.mark.parametrize(
    ("inked", "max_gap", "runs"),
    [
        ([0, 1, 2, 5, 6], 2, [(0, 7)]),  # the gap 3-4 bridged
        ([0, 1, 2, 6, 7], 2, [(6, 7)]),  # 3-5 too long; 8-9 bridged around to 0
        ([0, 1, 5, 6], 1, [(0, 2), (5, 2)]),  # both gaps too long
        ([8, 9, 1, 2], 2, [(8, 5)]),  # bridged across bin 0
        (list(range(10)), 0, [(0, 10)]),
        ([], 2, []),
    ],
)
def test_runs_bridge_short_gaps_around_the_ring(inked, max_gap, runs) -> None:
    occupied = np.zeros(10, bool)
    occupied[inked] = True
    assert sorted(_runs(occupied, max_gap)) == sorted(runs)


def _candidate(kind: str, members: range) -> _Candidate:
    return _Candidate({"kind": kind}, np.array(members), 1.0)


def test_a_line_keeps_its_ink_from_a_somewhat_larger_arc_through_it() -> None:
    line = _candidate("line", range(0, 100))
    arc = _candidate("arc", range(40, 170))  # more ink, most of it the line's
    kept = _greedy([arc, line], 400)
    assert [c.shape["kind"] for c in kept] == ["line"]


def test_a_line_ends_where_its_ink_breaks() -> None:
    mask = np.zeros((200, 400), np.uint8)
    mask[98:103, 50:200] = 255  # the line, 5 px wide
    mask[98:103, 206:380] = 255  # a collinear stroke beyond a 6 px gap
    end = _extend(mask, np.array([60.0, 100.0]), np.array([150.0, 100.0]), 5.0)
    assert 198 <= end[0] <= 201 and end[1] == pytest.approx(100)

"""The vectorize method's lines: ends stop where the line's own stroke does (not along a stroke
met at a shallow angle), crossings are passed, fragments broken at a crossing make one line, and
chords of arcs are no lines."""

from __future__ import annotations

import math

import cv2
import numpy as np

from model.jobs.vectorize.geometry import Thresholds, _bowed, _extend, _Ink, _merge_lines


def _mask(h: int = 300, w: int = 400) -> np.ndarray:
    return np.zeros((h, w), np.uint8)


def test_a_line_stops_where_it_meets_a_stroke_at_a_shallow_angle() -> None:
    mask = _mask()
    cv2.line(mask, (50, 100), (200, 100), 255, 5)
    # Another stroke goes on from the line's end, 12 degrees off its direction.
    end = (200 + 150 * math.cos(math.radians(12)), 100 + 150 * math.sin(math.radians(12)))
    cv2.line(mask, (200, 100), (round(end[0]), round(end[1])), 255, 5)
    found = _extend(mask, np.array([60.0, 100.0]), np.array([150.0, 100.0]), 5.0)
    assert 196 <= found[0] <= 212  # it was led on along the other stroke to x = 223


def test_a_line_is_extended_through_a_crossing_stroke() -> None:
    mask = _mask(400, 600)  # extended by 0.2 of the diagonal at most
    cv2.line(mask, (50, 100), (300, 100), 255, 5)
    cv2.line(mask, (210, 20), (250, 180), 255, 5)  # crosses it at x = 230
    found = _extend(mask, np.array([60.0, 100.0]), np.array([180.0, 100.0]), 5.0)
    assert 297 <= found[0] <= 303 and abs(found[1] - 100) < 1


def test_a_chord_of_an_arc_is_bowed_and_a_wobbly_straight_stroke_is_not() -> None:
    mask = _mask()
    cv2.ellipse(mask, (200, 200), (60, 60), 0, 250, 290, 255, 4)  # 40 degrees of r = 60
    a = np.array([200 + 60 * math.cos(math.radians(250)), 200 + 60 * math.sin(math.radians(250))])
    b = np.array([200 + 60 * math.cos(math.radians(290)), 200 + 60 * math.sin(math.radians(290))])
    assert _bowed(mask, a, b, 4.0)
    straight = _mask()
    xs = np.arange(40, 361, 20)
    ys = 150 + np.array([0, 1, 0, -1, 0, 1, 1, 0, -1, 0, 0, 1, 0, -1, -1, 0, 0])  # hand wobble
    cv2.polylines(straight, [np.stack([xs, ys], 1).astype(np.int32)], False, 255, 4)
    assert not _bowed(straight, np.array([40.0, 150.0]), np.array([360.0, 150.0]), 4.0)


def test_fragments_broken_at_a_crossing_make_one_line() -> None:
    mask = _mask()
    cv2.line(mask, (20, 100), (320, 100), 255, 5)
    cv2.line(mask, (130, 20), (130, 180), 255, 5)  # the crossing LSD broke it at
    ys, xs = np.nonzero(mask)
    ink = _Ink(mask, np.stack([xs, ys], 1).astype(np.float32), 5.0, math.hypot(400, 300))
    segs = np.array(
        [
            [22, 100, 110, 100],  # before the crossing
            [112, 100, 124, 101.2],  # a short piece beside it, its direction 6 degrees off
            [150, 100, 318, 100],  # after it, more than 3 % of the diagonal from the first
        ],
        np.float32,
    )
    lines = _merge_lines(segs, ink, Thresholds())
    assert len(lines) == 1
    p0, p1 = sorted([lines[0].shape["p0"], lines[0].shape["p1"]])
    assert abs(p0[0] - 20) <= 4 and abs(p1[0] - 320) <= 4

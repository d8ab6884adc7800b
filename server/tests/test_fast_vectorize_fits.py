"""The vectorize method's circle fits: the circle through three points, the geometric refit of a
short noisy arc, and the arcs found on ink nothing else explains (RANSAC on the leftover)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from model.jobs.vectorize.geometry import (
    Thresholds,
    _circle_through,
    _fit_circle,
    _leftover_candidates,
    ink_mask,
)


def _on_circle(cx: float, cy: float, r: float, degrees: list[float]) -> list[np.ndarray]:
    return [
        np.array([cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))])
        for a in degrees
    ]


def test_circle_through_three_points() -> None:
    a, b, c = _on_circle(120, -40, 55, [10, 100, 250])
    assert _circle_through(a, b, c) == pytest.approx((120, -40, 55))


def test_no_circle_through_collinear_points() -> None:
    assert _circle_through(np.array([0, 0]), np.array([5, 5]), np.array([10, 10])) is None


def test_a_short_noisy_arc_keeps_its_radius() -> None:
    """The algebraic (Kasa) fit alone gives about 0.7 of the radius here."""
    rng = np.random.default_rng(1)
    t = np.radians(np.linspace(10, 50, 200))
    pts = np.stack([300 + 100 * np.cos(t), 200 + 100 * np.sin(t)], 1) + rng.normal(0, 1.5, (200, 2))
    fit = _fit_circle(pts.astype(np.float32))
    assert fit is not None
    cx, cy, r = fit
    assert abs(r - 100) <= 10 and math.dist((cx, cy), (300, 200)) <= 10


def test_an_arc_on_the_leftover_ink_is_found_with_its_span() -> None:
    img = np.full((500, 600), 235, np.uint8)
    # 30 -> 150 degrees (increasing angle, y down) of a circle of radius 60 around (300, 220)
    cv2.ellipse(img, (300, 220), (60, 60), 0, 30, 150, 40, 3, cv2.LINE_AA)
    ink = ink_mask(img, Thresholds())
    found = _leftover_candidates(ink, np.zeros(len(ink.points), bool), Thresholds())
    assert found
    best = max(found, key=lambda c: len(c.members)).shape
    assert best["kind"] == "arc"
    assert math.dist(best["center"], (300, 220)) <= 4 and abs(best["radius"] - 60) <= 3
    assert abs(best["start_deg"] - 30) <= 10 and abs(best["end_deg"] - 150) <= 10


def test_straight_leftover_ink_is_no_arc() -> None:
    img = np.full((500, 600), 235, np.uint8)
    cv2.line(img, (50, 400), (550, 100), 40, 3, cv2.LINE_AA)
    ink = ink_mask(img, Thresholds())
    assert _leftover_candidates(ink, np.zeros(len(ink.points), bool), Thresholds()) == []

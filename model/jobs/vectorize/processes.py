"""Diagrams analysed in child processes, so one task's pages use every core it is given.

The method's Python loops hold the GIL: on this 2-core machine, 24 diagrams analysed on two
threads ran at 4.6 diagrams/s, the same as on one, and on two processes at 7.8/s
(docs/vectorize.md, "Speed"). The children are loky's reusable executor (joblib's): started once
per worker process by fork+exec (no lock held by this threaded process is inherited), reused by
the next task, and gone after IDLE_S without work — also when this process died, so a killed
worker leaves no child behind for long.
"""

from __future__ import annotations

import multiprocessing
import site
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[3]
IDLE_S = 60  # a child without work this long exits (and frees its memory)


def analysis_executor(size: int) -> Executor:
    """`size` child processes for `analyse_gray`, kept between tasks."""
    from joblib.externals.loky import get_reusable_executor

    _allow_children()
    # The children start a fresh interpreter: they must find this package, which the worker
    # imported with its folder on sys.path only for the while (Celery's cwd_in_path), so the
    # parent's sys.path they copy does not hold it.
    executor = get_reusable_executor(
        max_workers=size,
        timeout=IDLE_S,
        reuse=True,
        initializer=site.addsitedir,
        initargs=(str(PROJECT_ROOT),),
    )
    for _ in range(size):  # children start (about a second) while the first pages are fetched
        executor.submit(_load_method)
    return executor


def _load_method() -> None:
    import model.jobs.vectorize.geometry  # noqa: F401


def find_primitives(
    gray: np.ndarray, thresholds: dict[str, float], primitives: frozenset[str]
) -> tuple[list[dict[str, Any]], float]:
    """The primitives of a grey image, in its pixels, and the seconds it took: the method, in
    whichever process calls it (run.analyse: this one; analyse_gray: a child)."""
    from model.jobs.vectorize.geometry import Thresholds, vectorize

    started = time.perf_counter()
    found = vectorize(gray, Thresholds(**thresholds), primitives)
    return found, time.perf_counter() - started


def analyse_gray(
    gray: np.ndarray, thresholds: dict[str, float], primitives: frozenset[str]
) -> tuple[list[dict[str, Any]], float]:
    """find_primitives in a child of analysis_executor, on one OpenCV thread."""
    import cv2

    cv2.setNumThreads(1)  # the parallelism is the processes; more threads only contend
    return find_primitives(gray, thresholds, primitives)


def _allow_children() -> None:
    """Celery's prefork pool marks its processes daemonic, and multiprocessing then refuses to
    start children (a daemon's children could be orphaned). loky's children exit on their own
    once idle, so this process may have them: the mark is lifted for good, not around the call,
    as loky may also replace a crashed child later from its manager thread."""
    multiprocessing.current_process()._config.pop("daemon", None)

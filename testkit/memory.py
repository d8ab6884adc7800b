"""Resident memory of a process tree, sampled while something runs: tests and the bench record
what a request or a task costs a process (gunicorn, the worker) at its peak."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of a process and its children together (a master and its workers)."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@contextmanager
def peak_rss(root: psutil.Process, every_s: float = 0.05) -> Iterator[list[int]]:
    """Samples the tree's RSS in a thread; the list holds the peak once the block ends."""
    peak = [tree_rss(root)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(root))
            time.sleep(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()

"""A byte budget for decoded pixels, shared by the download/decode threads of one process.

A compressed page can be tiny on the wire and huge decoded (a 0.5 MB PNG of 13000x13000 pixels
is ~676 MB in Pillow), so bounding the number of pages in flight does not bound memory: each
thread reserves its page's decoded bytes here before decoding and gives them back once the page
is shrunk to the analysed size.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from model.settings import PipelineSettings

# How long a decode waits for others to release the budget. Others only hold it while they
# decode (seconds), so this is a bound for a stuck process, not a normal wait.
WAIT_S = 300.0
# How often a waiter checks its `stop` callable (a cancel) while it waits.
POLL_S = 0.1


class BudgetRefused(Exception):
    """The request is larger than the whole budget: it could never be granted."""


class BudgetTimeout(Exception):
    """The budget did not free up in time, or the waiter was told to stop."""


class ByteBudget:
    """A semaphore counting bytes. Waiters are served in arrival order, so a large image is
    not starved by a stream of small ones. A capacity of 0 or less means no bound."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._used

    def acquire(
        self,
        n: int,
        timeout: float | None = WAIT_S,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Take `n` bytes, waiting while others hold them. Raises BudgetRefused at once when
        `n` exceeds the capacity, BudgetTimeout after `timeout` seconds or when `stop()` is
        true (checked every POLL_S)."""
        if self.capacity <= 0:
            return
        if n > self.capacity:
            raise BudgetRefused(f"needs {n} bytes, the budget is {self.capacity}")
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._wait_turn(ticket, n, deadline, stop)
                self._used += n
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now

    def _wait_turn(
        self, ticket: object, n: int, deadline: float | None, stop: Callable[[], bool] | None
    ) -> None:
        while self._queue[0] is not ticket or self._used + n > self.capacity:
            if stop is not None and stop():
                raise BudgetTimeout("stopped while waiting for decode memory")
            wait = POLL_S if stop is not None else None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetTimeout(f"decode memory still in use after waiting for {n} bytes")
                wait = left if wait is None else min(wait, left)
            self._cond.wait(wait)

    def release(self, n: int) -> None:
        if self.capacity <= 0:
            return
        with self._cond:
            self._used = max(0, self._used - n)
            self._cond.notify_all()

    @contextmanager
    def hold(
        self,
        n: int,
        timeout: float | None = WAIT_S,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[None]:
        """`n` bytes for the duration of the block, given back however it ends."""
        self.acquire(n, timeout, stop)
        try:
            yield
        finally:
            self.release(n)


_process_budget: ByteBudget | None = None
_sizing = threading.Lock()


def size_process_budget(capacity: int) -> ByteBudget:
    """Size the process's budget: the worker calls it at start with `pipeline.decode_budget_bytes`
    of its settings."""
    global _process_budget
    _process_budget = ByteBudget(capacity)
    return _process_budget


def process_budget() -> ByteBudget:
    """The one budget of this process (all jobs' decode threads); the code's default size where
    the process set none (a test, a benchmark)."""
    with _sizing:
        if _process_budget is None:
            return size_process_budget(PipelineSettings().decode_budget_bytes)
        return _process_budget

"""Run a slow per-item step (download + decode) in threads ahead of the consumer (inference).

Memory stays bounded: at most `depth` finished results wait in the queue and each thread holds
at most one more. The consumer never blocks for long: it polls, so it can notice a cancel while
the network is slow, and `close()` stops the threads without waiting for their queue slot;
its `on_close` (a job passes its `FetchScope.cancel`) ends their downloads in flight too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Prefetcher(Generic[T, R]):
    def __init__(
        self,
        items: Iterable[T],
        work: Callable[[T], R],
        on_error: Callable[[T, Exception], R],
        threads: int,
        depth: int,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        pending = list(items)
        self._on_close = on_close
        self._items = iter(pending)
        self._remaining = len(pending)
        self._work = work
        self._on_error = on_error
        self._queue: queue.Queue[R] = queue.Queue(maxsize=max(1, depth))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"prefetch-{i}", daemon=True)
            for i in range(max(1, min(threads, len(pending))))
        ]
        for thread in self._threads:
            thread.start()

    def _next_item(self) -> tuple[bool, T | None]:
        with self._lock:
            for item in self._items:
                return True, item
            return False, None

    def _run(self) -> None:
        while not self._stop.is_set():
            found, item = self._next_item()
            if not found:
                return
            try:
                result = self._work(item)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - every item needs a result, or the consumer waits
                result = self._on_error(item, exc)  # type: ignore[arg-type]
            while not self._stop.is_set():
                try:
                    self._queue.put(result, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def next_batch(self, size: int, poll: Callable[[], None], poll_s: float = 0.25) -> list[R]:
        """Up to `size` results: waits for the first (calling `poll` meanwhile, which may
        raise to abort), then takes whatever else is ready. Empty once every item is out."""
        if self._remaining == 0:
            return []
        while True:
            poll()
            try:
                batch = [self._queue.get(timeout=poll_s)]
                break
            except queue.Empty:
                continue
        while len(batch) < min(size, self._remaining):
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._remaining -= len(batch)
        return batch

    def close(self) -> None:
        """Stop fetching more; threads finish their current item (cut short by `on_close`)
        and exit."""
        self._stop.set()
        if self._on_close is not None:
            self._on_close()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

"""Adaptive per-host concurrency: how many requests one process sends to a host at once.

Like a polite crawler (Scrapy's AutoThrottle, TCP's congestion window):

- a host starts at `start` requests at once and never gets more than `maximum`;
- 429 and 503 (and timeouts) halve it, once per round trip (the requests already in flight when
  it was cut say nothing new), and a `Retry-After` keeps every new request away from the host
  until it has passed;
- it grows after a round of responses (`limit` of them, at least `ROUND_MIN`) sent at the
  current level while the host was kept busy, if the EWMA of its latency (time to the response
  headers) stayed within `tolerance` of the host's unloaded latency (the lowest EWMA at a
  round's end; measured afresh whenever the host is down to one request at a time, so a host
  that got slower for good is not held there forever). Like TCP's slow start it doubles until
  the host first shows strain (a rise, a 429/503, a timeout; either halves it, back to the last
  level it took well), then grows by one: a healthy host is at its maximum after a few rounds
  (~1.2 s at 200 ms a request, instead of ~3 s), a strained one is probed gently;
- a latency above that (by `MIN_RISE_S` at least) shrinks it by one: a host that slows down as
  we add requests is queueing them, so more concurrency only adds load;
- images and other responses are followed apart: an IIIF server answers an info.json much
  sooner than the image it describes, and their mix is no trend;
- a host left idle for `IDLE_RESET_S` is probed afresh from `start`;
- a process that meets a host other processes have been reading starts at the limit they
  reached (`learned`, kept in Redis by host_slots.py for `IDLE_RESET_S`), not at `start`.

One `HostLimiter` per host, shared by the threads of a process: every method holds its lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting request looks at its cancel flag
EWMA_ALPHA = 0.5  # weight of the newest latency sample: a round mostly reflects its own level
ROUND_MIN = 4  # responses per round at least, so one lucky response does not grow the limit
# A rise smaller than this is no signal (network and scheduling jitter): a 10 ms info.json
# taking 20 ms is not a server slowing down.
MIN_RISE_S = 0.05
IDLE_RESET_S = 300.0  # a host unused this long is probed afresh: its load may have changed


@dataclass
class _Latency:
    """EWMA of one kind of response's latency, and its lowest value at a round's end."""

    ewma: float | None = None
    floor: float = math.inf
    fresh: int = 0  # samples in the current round

    def add(self, sample: float) -> None:
        old = sample if self.ewma is None else self.ewma
        self.ewma = EWMA_ALPHA * sample + (1 - EWMA_ALPHA) * old
        self.fresh += 1

    def end_round(self, tolerance: float, one_at_a_time: bool) -> bool:
        """Whether the latency rose this round beyond `tolerance` over the floor (and by
        MIN_RISE_S at least)."""
        if not self.fresh or self.ewma is None:
            return False
        self.fresh = 0
        if one_at_a_time:
            # Our own load is least: this is the host's unloaded latency now, even if it was
            # lower before (other images, other hours), so a host that got slower is not held
            # at one request forever.
            self.floor = self.ewma
            return False
        # Only a whole round's EWMA sets the floor: one fast response is not the host's norm.
        self.floor = min(self.floor, self.ewma)
        return self.ewma - self.floor > max(self.floor * tolerance, MIN_RISE_S)


@dataclass
class Permit:
    """One request's place in a host's limit, and what its response said about the host."""

    started: float
    latency_s: float | None = None  # time to the response headers; None: no usable response
    image: bool = False  # the response is an image (slower than documents: followed apart)
    throttled: bool = False  # 429/503 or a timeout: the host is overloaded
    retry_after_s: float | None = None


class HostLimiter:
    def __init__(
        self,
        host: str,
        start: int,
        maximum: int,
        tolerance: float,
        learned: int | None = None,
        on_round: Callable[[int], None] | None = None,
    ) -> None:
        """`learned`: the limit other processes reached with this host lately (host_slots.py):
        start there, past slow start. `on_round(limit)` hears the limit at every round's end."""
        self.host = host
        self.maximum = max(1, maximum)
        self.start = min(max(1, start), self.maximum)
        self.tolerance = max(0.0, tolerance)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._last_done = time.monotonic()
        self._not_before = 0.0  # no new request before this time (Retry-After)
        self._cut_at = -math.inf  # when the limit was last halved
        self._on_round = on_round
        self._report: int | None = None  # the limit to tell `on_round`, once out of the lock
        self._reset()
        if learned:
            self._limit = min(self.maximum, max(1, learned))
            self._slow_start = False  # the host has been probed already

    def _reset(self) -> None:
        self._limit = self.start
        self._slow_start = True  # doubling, until the host first shows strain
        self._latency = {False: _Latency(), True: _Latency()}  # by Permit.image
        self._begin_round(time.monotonic())

    def _begin_round(self, now: float) -> None:
        self._changed_at = now  # requests started before this were sent at another level
        self._samples = 0
        self._saturated = False  # whether the limit was reached during this round
        for latency in self._latency.values():
            latency.fresh = 0

    @property
    def limit(self) -> int:
        with self._cond:
            return self._limit

    def idle(self) -> bool:
        """Nothing in flight and no Retry-After pending: forgetting it loses nothing."""
        with self._cond:
            return self._in_flight == 0 and self._not_before <= time.monotonic()

    def paused_for(self) -> float:
        """Seconds until the host may get new requests (its Retry-After), 0 if it may now."""
        with self._cond:
            return max(0.0, self._not_before - time.monotonic())

    def acquire(self, cancelled: Callable[[], bool]) -> Permit | None:
        """Wait for a place (and for any Retry-After to pass); None once `cancelled()`."""
        with self._cond:
            if self._in_flight == 0 and time.monotonic() - self._last_done > IDLE_RESET_S:
                self._reset()
            while (wait_s := self._wait_s()) > 0:
                if cancelled():
                    return None
                self._cond.wait(min(wait_s, POLL_S))
            if cancelled():
                return None
            self._in_flight += 1
            self._saturated |= self._in_flight >= self._limit
            return Permit(started=time.monotonic())

    def _wait_s(self) -> float:
        """0 when a request may start now, else how long to wait (POLL_S: for a place)."""
        pause = self._not_before - time.monotonic()
        if pause > 0:
            return pause
        return 0.0 if self._in_flight < self._limit else POLL_S

    def release(self, permit: Permit) -> None:
        """Give the place back and learn from the response."""
        with self._cond:
            self._in_flight -= 1
            now = self._last_done = time.monotonic()
            if permit.throttled:
                self._back_off(permit, now)
            elif permit.latency_s is not None and permit.started >= self._changed_at:
                self._observe(permit.image, permit.latency_s, now)
            self._cond.notify_all()
            report, self._report = self._report, None
        # Told outside the lock: `on_round` may be slow (Redis), the other threads must not wait.
        if report is not None and self._on_round is not None:
            self._on_round(report)

    def _back_off(self, permit: Permit, now: float) -> None:
        if permit.retry_after_s:
            self._not_before = max(self._not_before, now + permit.retry_after_s)
        if permit.started < self._cut_at:
            return  # sent before the last cut: that cut answered this overload already
        self._cut_at = now
        self._slow_start = False
        self._set_limit(max(1, self._limit // 2), now, "throttled")

    def _observe(self, image: bool, latency_s: float, now: float) -> None:
        self._latency[image].add(latency_s)
        self._samples += 1
        if self._samples < max(self._limit, ROUND_MIN):
            return
        alone = self._limit == 1
        rose = [latency.end_round(self.tolerance, alone) for latency in self._latency.values()]
        if any(rose):
            # The first strain ends slow start: back to the level before the last doubling,
            # which the host took well; after that, one step down.
            fallen = self._limit // 2 if self._slow_start else self._limit - 1
            self._slow_start = False
            self._set_limit(max(1, fallen), now, "latency rose")
        elif self._saturated:
            grown = self._limit * 2 if self._slow_start else self._limit + 1
            self._set_limit(min(self.maximum, grown), now, "latency flat")
        else:
            self._begin_round(now)  # the host was not kept busy: the level is untested
        self._report = self._limit  # every round's end, changed or not: keeps it fresh

    def _set_limit(self, limit: int, now: float, why: str) -> None:
        if limit != self._limit:
            log.debug("%s: concurrency %d -> %d (%s)", self.host, self._limit, limit, why)
        self._limit = limit
        self._report = limit  # a cut too: a process meeting the host later must not start above
        self._begin_round(now)

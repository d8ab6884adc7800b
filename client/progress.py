"""Showing a task's progress on stderr while waiting: a live `rich` bar on a terminal (pages
done/failed of total, rate, ETA), a line now and then otherwise, nothing when asked to be quiet.
stdout is left to the command's result."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Protocol, TextIO


class RateMeter:
    """Pages per second over the last `window_s` seconds, and the time left at that rate."""

    def __init__(self, window_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, finished: int) -> None:
        now = self.clock()
        if self.samples and finished < self.samples[-1][1]:
            self.samples.clear()  # a redelivered task may count again from less
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        if t1 - t0 < 0.5 or (n1 == n0 and t1 - t0 < 3):
            return None  # too early to say
        return (n1 - n0) / (t1 - t0)

    def eta_s(self, finished: int, total: int) -> float | None:
        rate = self.rate()
        if not rate or total <= 0:
            return None
        return max(0.0, (total - finished) / rate)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(status: dict[str, Any], cancelling: bool = False) -> str:
    """'RUNNING', 'QUEUED #2 (~4 s)', 'CANCELLING'...: what the task is doing, briefly."""
    state = status.get("state", "?")
    if cancelling and state in ("QUEUED", "RUNNING"):
        return "CANCELLING"
    if state == "QUEUED":
        text = "QUEUED"
        if status.get("queue_position"):
            text += f" #{status['queue_position']}"
        if status.get("eta_s") is not None:
            text += f" (~{fmt_duration(status['eta_s'])})"
        return text
    return str(state)


def counts(status: dict[str, Any]) -> tuple[int, int, int]:
    progress = status.get("progress") or {}
    return (
        int(progress.get("done") or 0),
        int(progress.get("failed") or 0),
        int(progress.get("total") or 0),
    )


class View(Protocol):
    def start(self) -> None: ...
    def update(self, status: dict[str, Any], cancelling: bool = False) -> None: ...
    def stop(self) -> None: ...


class NoView:
    def start(self) -> None:
        pass

    def update(self, status: dict[str, Any], cancelling: bool = False) -> None:
        pass

    def stop(self) -> None:
        pass


class LineView:
    """For a stderr that is not a terminal (logs, CI): one line when the state changes, and at
    most one every `every_s` seconds while pages progress."""

    def __init__(self, task_id: str, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.task_id = task_id
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.meter = RateMeter()
        self.last: tuple[str, int, int, int] | None = None
        self.last_at = 0.0

    def start(self) -> None:
        pass

    def update(self, status: dict[str, Any], cancelling: bool = False) -> None:
        done, failed, total = counts(status)
        self.meter.add(done + failed)
        state = describe(status, cancelling)
        now = time.monotonic()
        key = (state.split(" ")[0], done, failed, total)
        if key == self.last or (
            self.last and key[0] == self.last[0] and now - self.last_at < self.every_s
        ):
            return
        self.last, self.last_at = key, now
        rate = self.meter.rate()
        parts = [f"task {self.task_id}: {state}", f"{done}/{total or '?'} done", f"{failed} failed"]
        if rate is not None:
            parts.append(f"{rate:.1f} pages/s")
            if status.get("state") in ("QUEUED", "RUNNING"):
                parts.append(f"ETA {fmt_duration(self.meter.eta_s(done + failed, total))}")
        print(", ".join(parts), file=self.stream, flush=True)

    def stop(self) -> None:
        pass


class RichView:
    """A live bar on the terminal: state, bar, done/total, failed, pages/s, elapsed, ETA."""

    def __init__(self, task_id: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.task_id = task_id
        self.meter = RateMeter()
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[pages]}"),
            TextColumn("[red]{task.fields[failed]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=False,
            refresh_per_second=8,
        )
        self.bar = self.progress.add_task(
            f"{task_id[:8]} …", total=None, pages="", failed="", rate="", eta="ETA -:--"
        )
        self.running = False

    def start(self) -> None:
        if not self.running:
            self.progress.start()
            self.running = True

    def update(self, status: dict[str, Any], cancelling: bool = False) -> None:
        done, failed, total = counts(status)
        finished = done + failed
        self.meter.add(finished)
        rate = self.meter.rate()
        state = describe(status, cancelling)
        ended = status.get("state") not in ("QUEUED", "RUNNING")
        eta = "" if ended else f"ETA {fmt_duration(self.meter.eta_s(finished, total))}"
        self.progress.update(
            self.bar,
            description=f"{self.task_id[:8]} {state}",
            total=total or None,
            completed=finished,
            pages=f"{done}/{total or '?'} pages",
            failed=f"{failed} failed" if failed else "",
            rate=f"{rate:.1f} pages/s" if rate is not None else "",
            eta=eta,
        )

    def stop(self) -> None:
        if self.running:
            self.progress.stop()
            self.running = False


def make_view(task_id: str, quiet: bool) -> View:
    if quiet:
        return NoView()
    if sys.stderr.isatty():
        return RichView(task_id)
    return LineView(task_id)

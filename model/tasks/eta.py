"""When a queued task starts: what `GET /status` says in `eta_s`.

Each of the queue's worker slots takes the next task as soon as it is free. A running task frees
its slot after the time it still needs at the rate it has gone so far (a task stuck on a
trickling host has done little in a long time: it will hold its slot long), or, before its first
item, after the job type's mean duration less what it has run; each queued task ahead then
holds a slot for the mean duration. Light: the HTTP process computes it on every status read.
"""

from __future__ import annotations

import heapq


def time_left_s(finished: int, total: int, running_s: float, mean_s: float | None) -> float:
    """What a running task still needs: its own rate once it has finished items, else the
    job type's mean duration (0 when unknown) less what it has run."""
    if finished > 0 and total > finished:
        return running_s * (total - finished) / finished
    if finished > 0:
        return 0.0  # its last items are in hand
    return max(0.0, (mean_s or 0.0) - running_s)


def start_in_s(position: int, slots: int, running_left_s: list[float], mean_s: float) -> float:
    """Seconds until the task at `position` (1: the next) of a queue starts, `slots` workers
    taking it, the tasks running there needing `running_left_s` more."""
    slots = max(1, slots)
    busy = sorted(running_left_s)[:slots]  # more running than live slots: the soonest free
    free_at = [0.0] * (slots - len(busy)) + busy
    heapq.heapify(free_at)
    for _ in range(max(0, position - 1)):  # the tasks ahead, each in the first slot free
        heapq.heappush(free_at, heapq.heappop(free_at) + mean_s)
    return free_at[0]

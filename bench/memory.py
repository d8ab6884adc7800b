"""Worker memory: resident set size of the Celery pool process (the one holding the model)
before and after a run of small detect tasks, sampled along the way."""

from __future__ import annotations

import time
from typing import Any

from bench.stack import peak_kib, rss_kib, wait_terminal
from testkit.stack import Api


def measure(api: Api, pid: int, image_urls: list[str], tasks: int, window: int) -> dict[str, Any]:
    """`tasks` one-image detect tasks, `window` queued at a time (the queue stays short)."""
    before = rss_kib(pid)
    samples = [(0, before)]
    states: dict[str, int] = {}
    pids: set[int] = set()
    started = time.monotonic()
    sent = 0
    while sent < tasks:
        batch = []
        for _ in range(min(window, tasks - sent)):
            url = image_urls[sent % len(image_urls)]
            batch.append(api.submit_ok({"type": "detect", "input": {"image_urls": [url]}}))
            sent += 1
        last, _ = wait_terminal(api, batch[-1], poll_s=0.05)  # one worker, FIFO: the rest ended
        for task_id in batch[:-1]:
            body = api.status(task_id).json()
            states[body["state"]] = states.get(body["state"], 0) + 1
        states[last["state"]] = states.get(last["state"], 0) + 1
        pids.add(((last.get("result") or {}).get("provenance") or {}).get("worker_pid"))
        samples.append((sent, rss_kib(pid)))
    after = samples[-1][1]
    return {
        "tasks": tasks,
        "pool_pid": pid,
        "pids_seen": sorted(p for p in pids if p is not None),
        "task_states": states,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_growth_pct": round((after - before) / before * 100, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_peak_mib": round(peak_kib(pid) / 1024, 1),
        "samples_mib": [(n, round(kib / 1024, 1)) for n, kib in samples],
        "wall_s": round(time.monotonic() - started, 1),
    }

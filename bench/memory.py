"""Worker memory: resident set size of the Celery pool processes (each holds the models) before
and after a run of small detect tasks, sampled along the way; and what each of them costs on
its own (USS: pages no other process shares; PSS: shared pages split among their users)."""

from __future__ import annotations

import time
from typing import Any

import psutil

from bench.stack import peak_kib, rss_kib, wait_terminal
from testkit.stack import Api


def per_process_mib(pids: list[int]) -> list[dict[str, float]]:
    out = []
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        out.append(
            {
                "pid": pid,
                "rss_mib": round(info.rss / 2**20, 1),
                "uss_mib": round(info.uss / 2**20, 1),
                "pss_mib": round(getattr(info, "pss", 0) / 2**20, 1),
            }
        )
    return out


def _rss(pids: list[int]) -> int:
    return sum(rss_kib(pid) for pid in pids)


def measure(
    api: Api, pids: list[int], image_urls: list[str], tasks: int, window: int
) -> dict[str, Any]:
    """`tasks` one-image detect tasks, `window` queued at a time (the queue stays short); RSS of
    all the pool processes `pids` together."""
    processes = per_process_mib(pids)
    before = _rss(pids)
    samples = [(0, before)]
    states: dict[str, int] = {}
    seen: set[int] = set()
    started = time.monotonic()
    sent = 0
    while sent < tasks:
        batch = []
        for _ in range(min(window, tasks - sent)):
            url = image_urls[sent % len(image_urls)]
            batch.append(api.submit_ok({"type": "detect", "input": {"image_urls": [url]}}))
            sent += 1
        for task_id in batch:  # pool processes run them side by side: wait for each
            body, _ = wait_terminal(api, task_id, poll_s=0.05)
            states[body["state"]] = states.get(body["state"], 0) + 1
            seen.add(((body.get("result") or {}).get("provenance") or {}).get("worker_pid"))
        samples.append((sent, _rss(pids)))
    after = samples[-1][1]
    return {
        "tasks": tasks,
        "pool_pids": pids,
        "pids_seen": sorted(p for p in seen if p is not None),
        "per_process_at_start": processes,
        "task_states": states,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_growth_pct": round((after - before) / before * 100, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_peak_mib": round(sum(peak_kib(pid) for pid in pids) / 1024, 1),
        "samples_mib": [(n, round(kib / 1024, 1)) for n, kib in samples],
        "wall_s": round(time.monotonic() - started, 1),
    }

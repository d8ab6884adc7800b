"""What the service adds to a task that does nothing: submit → terminal of a `noop` task through
the public entry point, next to the bare Celery round trip (`ping.delay().get()`, sent by name to
the same worker). Both are measured in alternating blocks, so they share the machine's load."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from bench.stats import summary_ms
from testkit.stack import Api

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}
PING = "scriptorium.ping"


def noop_once(api: Api, poll_s: float) -> dict[str, float]:
    started = time.perf_counter()
    resp = api.submit({"type": "noop"})
    submitted = time.perf_counter()
    if resp.status_code != 202:
        raise RuntimeError(f"noop submit refused: {resp.status_code} {resp.text[:300]}")
    task_id = resp.json()["task_id"]
    polls = 0
    while True:
        body = api.status(task_id).json()
        polls += 1
        if body["state"] in TERMINAL:
            break
        time.sleep(poll_s)
    ended = time.perf_counter()
    if body["state"] != "SUCCEEDED":
        raise RuntimeError(f"noop task ended {body['state']}: {body.get('error')}")
    created = datetime.fromisoformat(body["created_at"]).timestamp()
    began = datetime.fromisoformat(body["started_at"]).timestamp()
    finished = datetime.fromisoformat(body["finished_at"]).timestamp()
    return {
        "total": ended - started,
        "submit": submitted - started,
        "server": finished - created,  # record created (API) -> finished (worker)
        "queue_hop": began - created,  # record created -> started in a pool child
        "run": finished - began,  # started -> finished (the noop job and the record's end)
        "polls": polls,
    }


def ping_once(celery: Any) -> float:
    started = time.perf_counter()
    celery.send_task(PING).get(timeout=30)
    return time.perf_counter() - started


def noop_block(api: Api, count: int, poll_s: float) -> dict[str, int]:
    """`count` noop tasks one after another (for CPU per task)."""
    for _ in range(count):
        noop_once(api, poll_s)
    return {"tasks": count}


def ping_block(celery: Any, count: int) -> dict[str, int]:
    for _ in range(count):
        ping_once(celery)
    return {"tasks": count}


def measure(
    api: Api, celery: Any, count: int, poll_s: float, block: int = 20, warmup: int = 10
) -> dict[str, Any]:
    for _ in range(warmup):  # connections, the result consumer, imports in the worker
        noop_once(api, poll_s)
        ping_once(celery)
    noops: list[dict[str, float]] = []
    pings: list[float] = []
    while len(noops) < count:
        n = min(block, count - len(noops))
        noops.extend(noop_once(api, poll_s) for _ in range(n))
        pings.extend(ping_once(celery) for _ in range(n))
    noop = summary_ms([s["total"] for s in noops])
    bare = summary_ms(pings)
    return {
        "tasks": count,
        "poll_interval_ms": poll_s * 1000,
        "noop_submit_to_terminal": noop,
        "noop_submit_request": summary_ms([s["submit"] for s in noops]),
        "noop_server_created_to_finished": summary_ms([s["server"] for s in noops]),
        "noop_created_to_started": summary_ms([s["queue_hop"] for s in noops]),
        "noop_started_to_finished": summary_ms([s["run"] for s in noops]),
        "noop_polls_median": sorted(s["polls"] for s in noops)[len(noops) // 2],
        "celery_ping_round_trip": bare,
        "ratio_median": round(noop["median_ms"] / bare["median_ms"], 2),
        "ratio_p99": round(noop["p99_ms"] / bare["p99_ms"], 2),
    }

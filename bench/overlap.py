"""Tasks side by side (`worker.concurrency` pool processes):

- *slow hosts*: K tasks at once, each reading its own IIIF host that answers every request after
  L ms — the aggregate pages/s of the K, against one task from a host with no latency (the
  worker's own ceiling). One task at a time, K slow hosts could only add up to one host's
  pace; side by side, the model works while the tasks wait.
- *small behind big*: time to result of a one-page task submitted while a 500-page task runs,
  against the same one-page task on an idle worker.

Times come from the task records (submit on the client's clock, `finished_at` on the worker's:
one machine), as in service.py.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from typing import Any

from bench.iiif_host import IiifHost
from bench.service import request_methods
from bench.stack import wait_terminal
from testkit.stack import Api


def _finished(body: dict[str, Any]) -> float:
    return datetime.fromisoformat(body["finished_at"]).timestamp()


def _provenance(body: dict[str, Any]) -> dict[str, Any]:
    return (body.get("result") or {}).get("provenance") or {}


def _submit(api: Api, manifest_url: str) -> str:
    return api.submit_ok({"type": "detect", "input": {"manifest_url": manifest_url}})


def tasks_at_once(api: Api, hosts: list[IiifHost], manifests: list[str]) -> dict[str, Any]:
    """Submit one task per manifest at once; aggregate pages/s from the first submit to the
    last `finished_at`."""
    for host in hosts:
        host.reset_max_inflight()
    started = time.time()
    task_ids = [_submit(api, url) for url in manifests]
    bodies = [wait_terminal(api, task_id, poll_s=0.25)[0] for task_id in task_ids]
    ends = [_finished(b) for b in bodies]
    wall = max(ends) - started
    pages = sum(b["progress"]["done"] for b in bodies)
    timings = [_provenance(b).get("timings") or {} for b in bodies]
    fetch_s = sum(t.get("fetch_s", 0.0) for t in timings)
    return {
        "tasks": len(task_ids),
        "pages": pages,
        "failed": sum(b["progress"]["failed"] for b in bodies),
        "states": sorted({b["state"] for b in bodies}),
        "wall_s": round(wall, 3),
        "pages_per_s": pages / wall if wall else 0.0,
        "task_wall_s": [round(e - started, 3) for e in ends],
        "worker_pids": sorted({_provenance(b).get("worker_pid") for b in bodies} - {None}),
        "max_requests_at_once_per_host": [h.max_inflight for h in hosts],
        "fetch_ms_per_page": round(fetch_s / pages * 1000, 1) if pages else None,
        "request_methods": request_methods(bodies),
        "pipeline": _provenance(bodies[0]).get("pipeline"),
    }


def download_ceiling(hosts: int, concurrency: int, per_host: int, fetch_ms: float) -> float:
    """Pages/s the downloads allow: each running task keeps `per_host` requests in flight to its
    own host and a page costs `fetch_ms` of one slot; min(K, concurrency) tasks run at once."""
    return min(hosts, concurrency) * per_host / fetch_ms * 1000


def slow_hosts(
    api: Api,
    slow: list[IiifHost],
    slow_manifests: list[str],
    fast: IiifHost,
    fast_manifest: str,
    rounds: int,
    phase: Any,
) -> dict[str, Any]:
    """Alternate the baseline (one task, no latency) and the K slow-host tasks for `rounds`
    rounds; medians are compared. `phase` records each run (CPU per page, machine load)."""
    baseline_runs, slow_runs = [], []
    per_page = ("page", lambda result: result["pages"])
    for round_no in range(rounds):
        baseline_runs.append(
            phase(
                f"slow hosts: baseline, one task from a zero-latency host, round {round_no + 1}",
                lambda: tasks_at_once(api, [fast], [fast_manifest]),
                per=per_page,
            )
        )
        slow_runs.append(
            phase(
                f"slow hosts: {len(slow)} tasks from {len(slow)} slow hosts, round {round_no + 1}",
                lambda: tasks_at_once(api, slow, slow_manifests),
                per=per_page,
            )
        )
    baseline = statistics.median(r["pages_per_s"] for r in baseline_runs)
    aggregate = statistics.median(r["pages_per_s"] for r in slow_runs)
    last = slow_runs[-1]
    pipeline = last.get("pipeline") or {}
    per_host = pipeline.get("per_host_concurrency")
    ceiling = None
    if per_host and last.get("fetch_ms_per_page"):
        ceiling = download_ceiling(
            len(slow),
            pipeline.get("worker_concurrency") or 1,
            min(per_host, pipeline.get("download_threads", per_host)),
            last["fetch_ms_per_page"],
        )
    return {
        "hosts": len(slow),
        "latency_ms": round(slow[0].latency_s * 1000, 1) if slow else None,
        "baseline_rounds": baseline_runs,
        "slow_rounds": slow_runs,
        "baseline_pages_per_s": baseline,
        "aggregate_pages_per_s": aggregate,
        "ratio": aggregate / baseline if baseline else None,
        "download_ceiling_pages_per_s": ceiling,
        "worker_concurrency": pipeline.get("worker_concurrency"),
        "inference_threads": pipeline.get("inference_threads"),
    }


def _one(api: Api, manifest_url: str) -> dict[str, Any]:
    submitted = time.time()
    task_id = _submit(api, manifest_url)
    body, _ = wait_terminal(api, task_id, poll_s=0.01)
    return {
        "state": body["state"],
        "time_to_result_s": round(_finished(body) - submitted, 4),
        "worker_pid": _provenance(body).get("worker_pid"),
    }


def small_behind_big(
    api: Api, small_manifest: str, big_manifest: str, samples: int, min_done: int = 10
) -> dict[str, Any]:
    """`samples` one-page tasks on an idle worker, then `samples` more one after another while
    a big task runs (started, `min_done` pages in, so it is at full speed)."""
    idle = [_one(api, small_manifest) for _ in range(samples)]
    big_id = _submit(api, big_manifest)
    deadline = time.monotonic() + 300
    while True:
        big = api.status(big_id).json()
        if big["state"] == "RUNNING" and big["progress"]["done"] >= min_done:
            break
        if big["state"] not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            raise RuntimeError(f"big task is {big['state']}: {big.get('error')}")
        time.sleep(0.05)
    behind = []
    for _ in range(samples):
        before = api.status(big_id).json()
        sample = _one(api, small_manifest)
        after = api.status(big_id).json()
        # Counted if submitted while the big task ran (one task at a time, it then waits for
        # the rest of the big one; side by side, the big one is still running at its end).
        sample["big_running"] = before["state"] == "RUNNING"
        sample["big_running_after"] = after["state"] == "RUNNING"
        sample["big_done"] = [before["progress"]["done"], after["progress"]["done"]]
        behind.append(sample)
    big_end = api.status(big_id).json()
    if big_end["state"] == "RUNNING":
        api.terminate(big_id)
        big_end, _ = wait_terminal(api, big_id, poll_s=0.1)
    counted = [s["time_to_result_s"] for s in behind if s["big_running"]]
    idle_median = statistics.median(s["time_to_result_s"] for s in idle)
    behind_median = statistics.median(counted) if counted else None
    return {
        "samples": samples,
        "idle": idle,
        "behind_big": behind,
        "idle_median_s": idle_median,
        "behind_big_median_s": behind_median,
        "behind_big_counted": len(counted),
        "big_still_running_after": sum(1 for s in behind if s["big_running_after"]),
        "ratio": behind_median / idle_median if behind_median and idle_median else None,
        "big_task": {
            "pages": big_end["progress"]["total"],
            "done": big_end["progress"]["done"],
            "state": big_end["state"],
        },
    }

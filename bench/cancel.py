"""Cancel: DELETE /terminate of a running 200-page task until its status reads CANCELLED, then
proof that the worker process that ran it lives on with the model it had loaded (still a pool
child; a kill would have replaced it) and that the next task ran without loading a model
(provenance: model_loads_in_process 1; with `worker.concurrency` pool processes it may run in
another one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.stack import wait_terminal
from testkit.stack import Api


def measure(
    api: Api,
    long_manifest: str,
    next_manifest: str,
    min_done: int,
    pool_children: Callable[[], list[int]],
) -> dict[str, Any]:
    task_id = api.submit_ok({"type": "detect", "input": {"manifest_url": long_manifest}})
    deadline = time.monotonic() + 300
    while True:
        body = api.status(task_id).json()
        if body["state"] == "RUNNING" and body["progress"]["done"] >= min_done:
            break
        if body["state"] not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            raise RuntimeError(f"task to cancel is {body['state']}: {body.get('error')}")
        time.sleep(0.02)
    asked = time.perf_counter()
    answer = api.terminate(task_id)
    answered = time.perf_counter()
    body, _ = wait_terminal(api, task_id, poll_s=0.01, timeout_s=60)
    seen = time.perf_counter()
    cancelled = (body.get("result") or {}).get("provenance") or {}
    follow_id = api.submit_ok({"type": "detect", "input": {"manifest_url": next_manifest}})
    follow, _ = wait_terminal(api, follow_id)
    after = (follow.get("result") or {}).get("provenance") or {}
    pid = cancelled.get("worker_pid")
    alive = pid is not None and pid in pool_children()
    loads = cancelled.get("model_loads_in_process")
    same_loads = loads is not None and loads == after.get("model_loads_in_process")
    return {
        "pages": body["progress"]["total"],
        "done_when_cancelled": body["progress"]["done"],
        "terminate_status": answer.status_code,
        "terminate_request_s": round(answered - asked, 4),
        "terminate_to_cancelled_s": round(seen - asked, 4),
        "state": body["state"],
        "next_task_state": follow["state"],
        "worker_pid": {
            "cancelled_task": cancelled.get("worker_pid"),
            "next": after.get("worker_pid"),
        },
        "model_loads_in_process": {
            "cancelled_task": cancelled.get("model_loads_in_process"),
            "next": after.get("model_loads_in_process"),
        },
        "process_survived": alive,
        "same_process_no_reload": bool(alive and same_loads),
    }

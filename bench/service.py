"""The service end to end, as a client sees it: POST /task with a manifest URL through the public
entry point, then GET /status until the task has ended. Timed on the client's clock, from just
before the submit to the first status that shows the end."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from bench.iiif_host import IiifHost
from testkit.stack import Api

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}


def _seconds(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def run_manifest(
    api: Api,
    host: IiifHost,
    manifest_url: str,
    poll_s: float = 0.25,
    first_poll_s: float = 0.02,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Submit, then poll: every `first_poll_s` until the first page is in (time to first
    page), then every `poll_s` — frequent polls would take CPU from the worker being measured.
    The end is the task's own `finished_at`, so it does not depend on the polling interval."""
    mark = host.mark()
    submitted_at = time.time()
    started = time.monotonic()
    resp = api.submit({"type": "detect", "input": {"manifest_url": manifest_url}})
    if resp.status_code != 202:
        raise RuntimeError(f"submit refused: {resp.status_code} {resp.text[:300]}")
    task_id = resp.json()["task_id"]
    first_page: float | None = None
    deadline = started + timeout_s
    while True:
        body = api.status(task_id).json()
        now = time.monotonic()
        if first_page is None and body["progress"]["done"] + body["progress"]["failed"] > 0:
            first_page = now - started
        if body["state"] in TERMINAL:
            break
        if now > deadline:
            raise TimeoutError(f"task {task_id} still {body['state']} after {timeout_s} s")
        time.sleep(first_poll_s if first_page is None else poll_s)
    progress = body["progress"]
    provenance = (body.get("result") or {}).get("provenance") or {}
    created, finished = _seconds(body["created_at"]), _seconds(body["finished_at"])
    wall = (finished - submitted_at) if finished else now - started
    methods = request_methods([body])
    return {
        "task_id": task_id,
        "state": body["state"],
        "pages": progress["total"],
        "done": progress["done"],
        "failed": progress["failed"],
        "wall_s": wall,  # submit (client clock) -> finished_at (worker clock): one machine
        "seen_finished_after_s": now - started,
        "pages_per_s": progress["done"] / wall if wall else 0.0,
        "time_to_first_page_s": first_page,
        "server_created_to_finished_s": (finished - created) if created and finished else None,
        "image_bytes": host.image_bytes_since(mark),
        "requests_to_image_server": host.requests_since(mark),
        "requests_by_kind": host.requests_by_kind_since(mark),
        "request_methods": methods,
        "worker_timings": provenance.get("timings"),
        "pipeline": provenance.get("pipeline"),
        "worker_pid": provenance.get("worker_pid"),
        "model_loads_in_process": provenance.get("model_loads_in_process"),
        "backend": provenance.get("backend"),
        "device": provenance.get("device"),
        "cache": provenance.get("cache"),
        "_body": body,
    }


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    return (body.get("result") or {}).get("items") or []


def request_methods(bodies: list[dict[str, Any]]) -> list[str]:
    """How the worker planned the tasks' image requests ("computed", "info.json", ...)."""
    return sorted(
        {item.get("request", {}).get("method", "?") for body in bodies for item in _items(body)}
    )

"""A whole large book in one task (issue 19, item 10): one manifest of 10,000 canvases behind a
host answering every request after 100 ms, on a stack in its default configuration (its own:
the detection cache stays on, as shipped).

Every canvas has its own image URL and every URL answers the same JPEG bytes, so after the
first page the detection cache answers inference and what is measured is the service's own
work per page: the fetch behind the host's latency, the bookkeeping, the task record, polling.

Reported: pages/s against the attainable rate, min(unhindered rate, per-host places / latency)
(the unhindered rate: a shorter book of the same pages from a zero-latency host, measured in the
same run), /status latency while it runs (p50, p99), the finished status's size, the result's
fetch time (whole, and page by page), every page fetched and stored once, Redis memory and the
worker's memory (peak of its process tree).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from bench import stack as bench_stack
from bench.iiif_host import IiifHost
from synthetic import render_page
from testkit.iiif_server import v3_canvas, v3_image, v3_manifest
from testkit.memory import peak_rss, tree_rss
from testkit.stack import Api, Stack

PAGES = 10_000
LATENCY_S = 0.1
UNHINDERED_PAGES = 1_000
PAGE_LIMIT = 2_000  # items per page when the result is read page by page


def page_jpeg() -> bytes:
    """One synthetic page (1000 x 1400 px): the bytes every canvas's image answers."""
    out = io.BytesIO()
    render_page(10_000).image.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


def publish_book(root: Path, host: IiifHost, name: str, pages: int, image: Path) -> str:
    """A manifest of `pages` canvases, each image its own URL (a hard link to the same file),
    without an image service: one request a page, the full image."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    canvases = []
    for n in range(pages):
        page = folder / f"{n}.jpg"
        if not page.exists():
            os.link(image, page)
        body = {**v3_image(None, url=f"{host.url}/{name}/{n}.jpg"), "width": 1000, "height": 1400}
        canvases.append(v3_canvas(f"{host.url}/{name}/canvas/{n}", f"p. {n + 1}", 1000, 1400, body))
    manifest = v3_manifest(f"{host.url}/{name}/manifest.json", name, canvases)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return f"{host.url}/{name}/manifest.json"


def _redis_memory(stack: Stack) -> dict[str, float]:
    info = stack.redis().info("memory")
    return {
        "used_mib": round(info["used_memory"] / 2**20, 1),
        "peak_mib": round(info["used_memory_peak"] / 2**20, 1),
    }


def _run(api: Api, manifest: str, poll_s: float) -> dict[str, Any]:
    """Submit the book, poll its status until it ends (timing each poll); the task's own
    timestamps give its rate."""
    resp = api.submit({"type": "detect", "input": {"manifest_url": manifest}, "timeout": 3600})
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    latencies: list[float] = []
    sizes: list[int] = []
    while True:
        started = time.perf_counter()
        status = api.status(task_id)
        latencies.append(time.perf_counter() - started)
        sizes.append(len(status.content))
        body = status.json()
        if body["state"] not in ("QUEUED", "RUNNING"):
            break
        time.sleep(poll_s)
    final = api.status(task_id)
    body = final.json()
    seconds = _seconds(body)
    latencies.sort()
    return {
        "task_id": task_id,
        "state": body["state"],
        "pages": body["progress"]["done"],
        "failed": body["progress"]["failed"],
        "seconds": seconds,
        "pages_per_s": body["progress"]["done"] / seconds if seconds else None,
        "warnings": body.get("warnings"),
        "status_polls": len(latencies),
        "status_p50_s": statistics.median(latencies),
        "status_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "status_max_bytes_running": max(sizes[:-1] or [0]),
        "status_bytes_finished": len(final.content),
    }


def _seconds(body: dict[str, Any]) -> float:
    from datetime import datetime

    started = datetime.fromisoformat(body["started_at"])
    finished = datetime.fromisoformat(body["finished_at"])
    return (finished - started).total_seconds()


def _fetch_result(api: Api, task_id: str, pages: int) -> dict[str, Any]:
    started = time.perf_counter()
    whole = api.request("GET", f"/result/{task_id}", timeout=120)
    whole_s = time.perf_counter() - started
    indices = [item["index"] for item in whole.json()["items"]]
    started = time.perf_counter()
    paged: list[int] = []
    offset: int | None = 0
    requests = 0
    while offset is not None:
        page = api.request(
            "GET", f"/result/{task_id}", params={"offset": offset, "limit": PAGE_LIMIT}
        ).json()
        paged += [item["index"] for item in page["items"]]
        offset = page["next_offset"]
        requests += 1
    paged_s = time.perf_counter() - started
    return {
        "whole_s": round(whole_s, 3),
        "whole_bytes": len(whole.content),
        "paged_s": round(paged_s, 3),
        "paged_requests": requests,
        "items_whole": len(indices),
        "items_each_once_whole": sorted(indices) == list(range(pages)),
        "items_each_once_paged": sorted(paged) == list(range(pages)),
    }


def measure(data_dir: Path, pages: int = PAGES, poll_s: float = 0.25) -> dict[str, Any]:
    """The whole phase, on a stack of its own (default configuration)."""
    root = data_dir / "book-host"
    root.mkdir(parents=True, exist_ok=True)
    image = root / "page.jpg"
    image.write_bytes(page_jpeg())
    slow = IiifHost(root, LATENCY_S)
    fast = IiifHost(root, 0.0)
    stack, notes = bench_stack.start(data_dir / "stack", default_cache=True)
    try:
        api = stack.client(bench_stack.bench_key(stack))
        settings = stack.settings()
        book = publish_book(root, slow, "book10k", pages, image)
        short = publish_book(root, fast, "book-unhindered", min(pages, UNHINDERED_PAGES), image)
        warm = _run(api, publish_book(root, fast, "warm", 4, image), poll_s)  # cache, models
        unhindered = _run(api, short, poll_s)
        worker = psutil.Process(stack.program_pid("worker"))
        redis_before = _redis_memory(stack)
        worker_before = tree_rss(worker)
        mark = slow.mark()
        with peak_rss(worker, every_s=0.5) as worker_peak:
            run = _run(api, book, poll_s)
        fetched = [e.path for e in slow.log[mark:] if e.path.endswith(".jpg")]
        redis_after = _redis_memory(stack)
        result = _fetch_result(api, run["task_id"], pages)
        places = settings.fetch.per_host_concurrency
        ceiling = places / LATENCY_S
        attainable = min(unhindered["pages_per_s"] or ceiling, ceiling)
        return {
            "pages": pages,
            "latency_ms": LATENCY_S * 1000,
            "per_host_places": places,
            "max_canvases": settings.iiif.max_canvases,
            "stack": notes,
            "warm_up": {k: warm[k] for k in ("state", "pages", "seconds")},
            "unhindered": unhindered,
            "book": run,
            "attainable_pages_per_s": attainable,
            "ratio_to_attainable": (run["pages_per_s"] or 0) / attainable,
            "host_max_inflight": slow.max_inflight,
            "image_requests": len(fetched),
            "each_page_fetched_once": sorted(fetched)
            == sorted(f"/book10k/{n}.jpg" for n in range(pages)),
            "result": result,
            "redis_before": redis_before,
            "redis_after": redis_after,
            "worker_rss_before_mib": round(worker_before / 2**20),
            "worker_rss_peak_mib": round(worker_peak[0] / 2**20),
        }
    finally:
        stack.stop()
        slow.stop()
        fast.stop()

"""Raw end to end: a user's own best script over the same pages, the CPU limit for the service.

The pages' bytes (and the manifest's) are fetched once, before timing, and held in memory; then
`worker.concurrency` processes — as many as the worker runs tasks at once, each with the
worker's inference threads — decode, shrink and predict their share of the pages with the
worker's own code: `PageLoader` (size negotiation, hashing, `decode_within`) reading from memory
instead of the network, and the worker's `YoloDetector` in the worker's batch size. What it
leaves out is what a script need not do: downloads, the task record, result items, the queue.

Each process measures its own CPU time (all its threads: ONNX Runtime's included) spent in
decoding and in inference, so the CPU table can put decode and inference per page side by
side with the service's (`decode_cpu_s` in the worker's task timings).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# The worker's own processes fork from a parent that holds no models; here "spawn" keeps the
# benchmark's own loaded detectors (raw inference-only) out of the children.
_CONTEXT = multiprocessing.get_context("spawn")


class RecordingFetcher:
    """A fetcher that keeps every body it reads (URL → bytes): what the baseline replays."""

    def __init__(self, fetcher: Any) -> None:
        self.fetcher = fetcher
        self.bodies: dict[str, bytes] = {}

    def get(self, url: str, max_bytes: int | None = None) -> Any:
        found = self.fetcher.get(url, max_bytes=max_bytes)
        self.bodies[url] = found.content
        return found


class MemoryFetcher:
    """Answers from bodies recorded before: no network, no latency."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies

    def get(self, url: str, max_bytes: int | None = None) -> Any:
        return SimpleNamespace(content=self.bodies[url], url=url, status_code=200)


@dataclass
class Job:
    manifest_url: str
    bodies: dict[str, bytes]
    backend: str  # inference.backend, as the worker reads it
    threads: int  # inference threads per process (Settings.inference_threads)
    batch_size: int


def _serve(job: Job, conn: Any) -> None:
    """One process: load the model, plan the pages, then time each share it is sent."""
    from model.inference.registry import discover
    from model.jobs.contract import ManifestUrl, TaskSpec
    from model.jobs.units import plan_units
    from model.settings import Settings

    settings = Settings(fetch={"allow": ["127.0.0.1"]})
    info = discover(settings.model_dirs)[settings.models.default]
    from model.inference.detector import YoloDetector

    detector = YoloDetector(info, job.backend, job.threads)
    fetcher = MemoryFetcher(job.bodies)
    units = plan_units(TaskSpec(inputs=[ManifestUrl(url=job.manifest_url)]), fetcher, settings)
    loader = worker_loader(fetcher, settings, detector.imgsz)
    first = loader(units.units[0])
    detector.predict([first.image], 0.25, 0.45)  # warm up: first-call allocations
    conn.send(("ready", detector.backend))
    while (share := conn.recv()) is not None:
        decode_cpu = infer_cpu = 0.0
        for start in range(0, len(share), job.batch_size):
            batch = [loader(units.units[i]) for i in share[start : start + job.batch_size]]
            t0 = time.process_time()  # every thread of the process: ONNX Runtime's too
            detector.predict([p.image for p in batch], 0.25, 0.45)
            infer_cpu += time.process_time() - t0
            decode_cpu += sum(p.decode_cpu_s for p in batch)  # measured as the worker does
        conn.send(("done", decode_cpu, infer_cpu))
    conn.close()


def worker_loader(fetcher: Any, settings: Any, imgsz: int, params_key: str = "raw") -> Any:
    """The worker's PageLoader, as detect builds it (model/jobs/pages.py; no caches)."""
    from model.jobs.detect import MAX_SIDE_FACTOR
    from model.jobs.pages import build_loader
    from model.pipeline.cache import DetectionCache

    max_side = imgsz * MAX_SIDE_FACTOR
    return build_loader(
        fetcher,
        settings,
        cache=DetectionCache(None, 0, 0),
        params_key=params_key,
        max_side=max_side,
        min_side=min(max_side, imgsz),
        analyse_side=min(max_side, imgsz),
    )


class Pool:
    """`processes` processes with the model loaded, each waiting for its share of pages."""

    def __init__(self, job: Job, processes: int) -> None:
        self.links = []
        self.procs = []
        for _ in range(processes):
            parent, child = _CONTEXT.Pipe()
            proc = _CONTEXT.Process(target=_serve, args=(job, child), daemon=True)
            proc.start()
            child.close()
            self.links.append(parent)
            self.procs.append(proc)
        self.backends = sorted({link.recv()[1] for link in self.links})

    def run(self, pages: int) -> dict[str, Any]:
        """All pages once, split evenly (page i to process i mod P): wall time from handing
        the shares out to the last process done, and CPU seconds per page by stage."""
        shares = [list(range(k, pages, len(self.links))) for k in range(len(self.links))]
        started = time.perf_counter()
        for link, share in zip(self.links, shares, strict=True):
            link.send(share)
        replies = [link.recv() for link in self.links]
        wall = time.perf_counter() - started
        decode = sum(r[1] for r in replies)
        infer = sum(r[2] for r in replies)
        return {
            "pages": pages,
            "processes": len(self.links),
            "pages_per_s": pages / wall,
            "wall_s": wall,
            "decode_cpu_ms_per_page": decode / pages * 1000,
            "inference_cpu_ms_per_page": infer / pages * 1000,
        }

    def close(self) -> None:
        for link in self.links:
            with contextlib.suppress(OSError):
                link.send(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()

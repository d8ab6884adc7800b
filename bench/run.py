"""One benchmark run: every phase in order, each figure next to the baseline it is compared with,
measured in the same run (rounds of raw and service alternate, so drift hits both)."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import (
    book,
    cancel,
    memory,
    overhead,
    overlap,
    profile_api,
    raw,
    raw_e2e,
    seed_style,
    service,
    vectorize,
    wrk,
)
from bench import stack as bench_stack
from bench.cpu import CpuMeter
from bench.iiif_host import IiifHost
from bench.machine import LoadMonitor, describe
from bench.pages import ensure_computed, ensure_pages, tree_root
from model.settings import Settings

PARTS = (
    "raw",
    "seed",
    "service",
    "requests",
    "scaling",
    "slow_hosts",
    "small_big",
    "overhead",
    "status",
    "profile",
    "cancel",
    "memory",
    "book10k",
    "vectorize",
    "cluster",
)
OWN_STACK_PARTS = {"book10k"}  # on a stack of their own, in the default configuration
# The parts that run against the run's shared live stack (cluster runs in-process).
STACK_PARTS = set(PARTS) - {"raw", "seed", "cluster"} - OWN_STACK_PARTS


PER_PAGE = ("page", lambda result: result["pages"])
PER_REQUEST = ("request", lambda result: result.get("requests", 0))


@dataclass
class Options:
    pages: int = 50
    latency_ms: float = 50.0
    seed_pages: int = 50
    rounds: int = 2
    scaling: list[int] = field(default_factory=lambda: [10, 50, 200])
    noop_tasks: int = 200
    poll_ms: float = 2.0
    wrk_seconds: int = 10
    wrk_connections: int = 16
    profile_calls: int = 2000  # GET /status calls profiled (noop submits: a quarter)
    cancel_pages: int = 200
    memory_tasks: int = 500
    slow_hosts: int = 4  # K tasks from K hosts...
    slow_latency_ms: float = 200.0  # ...each answering every request after this long
    big_pages: int = 500  # the big task of small-behind-big
    small_samples: int = 5  # one-page tasks timed on an idle worker, then behind the big one
    book_pages: int = 10_000  # the book10k phase's manifest
    concurrency: int | None = None  # worker.concurrency of the stack (None: the configured one)
    cpu_threads: int | None = None  # inference.cpu_threads of the stack (None: the configured one)
    parts: set[str] = field(default_factory=lambda: set(PARTS))
    gpu: bool = False
    cache_dir: Path = Path("bench/results/tmp/pages")
    vectorize_diagrams: int = 200  # held-out diagrams scored (and 1/4 of them through the API)
    keep: bool = False


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.monitor = LoadMonitor()
        self.results: dict[str, Any] = {"skipped": []}
        self.stack: Any = None
        self.api: Any = None
        self.extra_hosts: list[IiifHost] = []
        self.overlap_manifests: dict[str, Any] = {}

    # --- helpers ---------------------------------------------------------------------------
    def skip(self, part: str, reason: str) -> None:
        self.o.parts.discard(part)
        self.results["skipped"].append({"part": part, "reason": reason})
        print(f"[bench] skipped {part}: {reason}", flush=True)

    def phase(
        self,
        name: str,
        work: Callable[[], Any],
        per: tuple[str, Callable[[Any], int]] | None = None,
    ) -> Any:
        """Run one measured step; with `per` (unit name, count of units in the result), also
        record the CPU time each process group spent per unit."""
        print(f"[bench] {name} ...", flush=True)
        meter = CpuMeter(self.stack.process.pid if self.stack is not None else None)
        self.monitor.start(name)
        before = meter.snapshot()
        started = time.monotonic()
        try:
            result = work()
        finally:
            self.monitor.stop()
            print(f"[bench] {name} done in {time.monotonic() - started:.1f} s", flush=True)
        if per is not None and (units := per[1](result)) > 0:
            cpu = meter.per_unit_ms(before, meter.snapshot(), units)
            self.results.setdefault("cpu_ms_per_unit", {})[name] = {"unit": per[0], **cpu}
        return result

    def wanted(self, part: str) -> bool:
        return part in self.o.parts

    # --- the run ---------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        o = self.o
        meta = describe()
        meta["options"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(o).items()}
        meta["options"]["cache_dir"] = str(o.cache_dir)
        meta["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["model"] = _model_card()
        meta["busy_foreign_processes_at_start"] = self.monitor.heavy_foreign_processes()
        self.results["meta"] = meta
        self._check_tools()
        if o.parts - OWN_STACK_PARTS:
            self._shared_stack_parts()
        if self.wanted("book10k"):
            data_dir = Path(tempfile.mkdtemp(prefix="scriptorium-book10k-"))
            try:
                self.results["book10k"] = self.phase(
                    "book10k: 10,000-page manifest behind a 100 ms host",
                    lambda: book.measure(data_dir, o.book_pages),
                )
            finally:
                if not o.keep:
                    shutil.rmtree(data_dir, ignore_errors=True)
        meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["load_by_phase"] = self.monitor.phases
        meta["busy_foreign_processes_at_end"] = self.monitor.heavy_foreign_processes()
        return self.results

    def _shared_stack_parts(self) -> None:
        """Every part but those on a stack of their own: pages, hosts, one stack for all."""
        o = self.o
        count = max(
            [o.pages, o.seed_pages]
            + (o.scaling if self.wanted("scaling") else [])
            + ([o.cancel_pages] if self.wanted("cancel") else [])
        )
        processes = os.cpu_count() or 2
        pages = self.phase("render pages", lambda: ensure_pages(o.cache_dir, count, processes))
        imgsz = _imgsz(Settings())
        self.phase(
            "render level-2 sizes", lambda: ensure_computed(o.cache_dir, pages, imgsz, processes)
        )
        host = IiifHost(tree_root(o.cache_dir), o.latency_ms / 1000)
        host.publish(pages)
        book = pages[: o.pages]
        manifests = {
            "negotiated": host.manifest(f"book-{o.pages}", book),
            "full": host.manifest(f"book-{o.pages}-full", book, service=False),
            "level0": host.manifest(f"book-{o.pages}-level0", book, level=0),
            "single": host.manifest("single", pages[:1]),
        }
        self.results["setup"] = {
            "pages": o.pages,
            "page_sizes_px": [min(p.width for p in book), max(p.height for p in book)],
            "latency_ms": o.latency_ms,
            "full_size_bytes_total": sum(p.full_bytes for p in book),
        }
        if {"slow_hosts", "small_big"} & o.parts:
            self._overlap_hosts(pages, book)
        if self.wanted("cluster"):  # in process, no stack: the method's quality and cost
            from bench import cluster

            self.results["cluster"] = self.phase("cluster method", cluster.measure)
        data_dir = Path(tempfile.mkdtemp(prefix="scriptorium-bench-"))
        try:
            if STACK_PARTS & o.parts:
                self.phase("start stack", lambda: self._start_stack(data_dir))
            self._measure(host, pages, manifests, data_dir)
        finally:
            if self.stack is not None:
                self.stack.stop()
                self.stack = None  # later phases (book10k) run on their own stack
            for extra in [host, *self.extra_hosts]:
                extra.stop()
            if not o.keep:
                shutil.rmtree(data_dir, ignore_errors=True)

    def _check_tools(self) -> None:
        if self.o.gpu:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("--gpu given but torch sees no CUDA device")
            self.results["meta"]["gpu"] = torch.cuda.get_device_name(0)
        missing = [t for t in ("redis-server",) if shutil.which(t) is None]
        if missing:
            for part in sorted((STACK_PARTS | OWN_STACK_PARTS) & self.o.parts):
                self.skip(part, f"{', '.join(missing)} not installed: the stack cannot run")
        if self.wanted("status") and not wrk.available():
            self.skip("status", "wrk not installed (Debian package wrk)")

    def _overlap_hosts(self, pages: list, book: list) -> None:
        """A zero-latency host (baselines, the big task) and K slow ones, all serving the same
        tree: every task of the slow-hosts phase reads its own host."""
        o = self.o
        tree = tree_root(o.cache_dir)
        fast = IiifHost(tree, 0.0)
        slow = [IiifHost(tree, o.slow_latency_ms / 1000) for _ in range(o.slow_hosts)]
        self.extra_hosts = [fast, *slow]
        big = [pages[i % len(pages)] for i in range(o.big_pages)]
        self.overlap_manifests = {
            "fast": fast,
            "slow": slow,
            "fast_book": fast.manifest(f"fast-{o.pages}", book),
            "slow_books": [h.manifest(f"slow-{k}-{o.pages}", book) for k, h in enumerate(slow)],
            "small": fast.manifest("fast-single", pages[:1]),
            "big": fast.manifest(f"fast-big-{o.big_pages}", big),
        }

    def _start_stack(self, data_dir: Path) -> None:
        extra = {}
        if self.o.concurrency:
            extra["SCRIPTORIUM_WORKER__CONCURRENCY"] = str(self.o.concurrency)
        if self.o.cpu_threads is not None:
            extra["SCRIPTORIUM_INFERENCE__CPU_THREADS"] = str(self.o.cpu_threads)
        self.stack, notes = bench_stack.start(data_dir / "stack", extra)
        settings = self.stack.settings()
        notes["worker_concurrency"] = str(settings.worker.concurrency)
        notes["inference_threads_per_process"] = str(settings.inference_threads())
        key = bench_stack.bench_key(self.stack)
        self.api = self.stack.client(key)
        self.key = key
        entry = bench_stack.entry_point(self.stack.base_url)
        notes["entry_point"] = entry
        if entry != "nginx":
            notes["entry_point_note"] = "nginx is not in front: figures are gunicorn's own"
        self.results["stack"] = notes

    def _measure(self, host: IiifHost, pages: list, manifests: dict, data_dir: Path) -> None:
        o = self.o
        settings = Settings(fetch={"allow": ["127.0.0.1"]})
        detectors: dict[str, Any] = {}
        prepared = None
        e2e: raw_e2e.Pool | None = None
        if self.wanted("raw"):
            prepared = self.phase(
                "raw: prepare pages",
                lambda: raw.prepare(manifests["negotiated"], _imgsz(settings), settings),
            )
            detectors, auto = self.phase(
                "raw: load detectors",
                lambda: raw.load_detectors(data_dir, ["onnx", "torch"]),
            )
            self.results["raw"] = {
                "worker_backend_auto": auto,
                "prepared_bytes": prepared.bytes_fetched,
                "request_methods": sorted(set(prepared.methods)),
                "analysed_size_px": list(prepared.images[0].size),
                "rounds": {name: [] for name in detectors},
            }
            self.results["raw"]["box_agreement"] = self.phase(
                "raw: torch vs onnx boxes", lambda: self._compare(detectors, prepared.images)
            )
            e2e = self.phase(
                "raw end to end: start processes",
                lambda: self._start_e2e(manifests["negotiated"], prepared.bodies, settings),
            )
        if self.wanted("seed"):
            self._seed(host, pages[: o.seed_pages])
        if self.wanted("service"):
            self.results["service"] = {"negotiated": {"rounds": []}}
        for round_no in range(o.rounds if (self.wanted("raw") or self.wanted("service")) else 0):
            if prepared is not None:
                for name, detector in detectors.items():
                    timing = self.phase(
                        f"raw {name} round {round_no + 1}",
                        lambda d=detector: raw.time_backend(
                            d, prepared.images, _batch(settings), 0.25, 0.45
                        ),
                        per=("page", lambda _: len(prepared.images)),
                    )
                    self.results["raw"]["rounds"][name].append(timing)
            if e2e is not None:
                timing = self.phase(
                    f"raw end to end round {round_no + 1}",
                    lambda: e2e.run(len(prepared.images)),
                    per=PER_PAGE,
                )
                self.results["raw_e2e"]["rounds"].append(timing)
            if self.wanted("service"):
                run = self.phase(
                    f"service round {round_no + 1}",
                    lambda: service.run_manifest(self.api, host, manifests["negotiated"]),
                    per=PER_PAGE,
                )
                run.pop("_body")
                self.results["service"]["negotiated"]["rounds"].append(run)
        if e2e is not None:
            e2e.close()  # its processes hold the model: free the cores and memory
        if self.wanted("service"):
            full = self.phase(
                "service without size negotiation",
                lambda: service.run_manifest(self.api, host, manifests["full"]),
                per=PER_PAGE,
            )
            full.pop("_body")
            self.results["service"]["full_size"] = full
        if self.wanted("requests"):
            self._requests_per_page(host, manifests)
        if self.wanted("scaling"):
            self._scaling(host, pages)
        if self.wanted("slow_hosts"):
            m = self.overlap_manifests
            self.results["slow_hosts"] = overlap.slow_hosts(
                self.api,
                m["slow"],
                m["slow_books"],
                m["fast"],
                m["fast_book"],
                o.rounds,
                self.phase,
            )
        if self.wanted("small_big"):
            m = self.overlap_manifests
            self.results["small_behind_big"] = self.phase(
                f"small behind big ({o.big_pages}-page task)",
                lambda: overlap.small_behind_big(self.api, m["small"], m["big"], o.small_samples),
            )
        if self.wanted("overhead"):
            celery = bench_stack.celery_client(self.stack)
            self.results["overhead"] = self.phase(
                "API overhead (noop vs celery ping)",
                lambda: overhead.measure(self.api, celery, o.noop_tasks, o.poll_ms / 1000),
            )
            # The same two round trips once more, apart, for the CPU each costs per task.
            per_task = ("task", lambda result: result["tasks"])
            count = max(1, o.noop_tasks // 2)
            self.phase(
                "noop tasks (CPU)",
                lambda: overhead.noop_block(self.api, count, o.poll_ms / 1000),
                per=per_task,
            )
            self.phase(
                "celery pings (CPU)", lambda: overhead.ping_block(celery, count), per=per_task
            )
        if self.wanted("status") or self.wanted("profile"):
            self._status(manifests["single"])
        if self.wanted("cancel"):
            long_manifest = host.manifest(f"cancel-{o.cancel_pages}", pages[: o.cancel_pages])
            self.results["cancel"] = self.phase(
                "cancel",
                lambda: cancel.measure(
                    self.api,
                    long_manifest,
                    manifests["single"],
                    min_done=8,
                    pool_children=self.stack.pool_children,
                ),
            )
        if self.wanted("memory"):
            self._memory(host, pages, manifests["single"])
        if self.wanted("vectorize"):
            n = o.vectorize_diagrams
            self.results["vectorize"] = self.phase(
                "vectorize: F1 and diagrams/s", lambda: vectorize.run(self.api, n, max(5, n // 4))
            )
        self._summarise()

    # --- phases ----------------------------------------------------------------------------
    def _compare(self, detectors: dict[str, Any], images: list) -> dict[str, Any]:
        if not {"onnx", "torch"} <= set(detectors):
            return {"skipped": f"only {sorted(detectors)} available"}
        boxes = {n: raw.predictions(d, images, 0.25, 0.45) for n, d in detectors.items()}
        found = raw.compare_boxes(boxes["torch"], boxes["onnx"])
        found["boxes"] = {n: sum(len(b) for b in v) for n, v in boxes.items()}
        found["devices"] = {n: d.device for n, d in detectors.items()}
        return found

    def _start_e2e(self, manifest: str, bodies: dict[str, bytes], settings: Settings) -> Any:
        """`worker.concurrency` processes with the worker's model, backend and threads, as the
        stack runs them (its --concurrency / --cpu-threads included)."""
        if self.stack is not None:
            settings = self.stack.settings()
        job = raw_e2e.Job(
            manifest_url=manifest,
            bodies=bodies,
            backend=settings.inference.backend,  # auto: torch/CUDA on a GPU, as the worker
            threads=settings.inference_threads(),
            batch_size=_batch(settings),
        )
        pool = raw_e2e.Pool(job, settings.worker.concurrency)
        self.results["raw_e2e"] = {
            "processes": settings.worker.concurrency,
            "threads_per_process": job.threads,
            "backends": pool.backends,
            "rounds": [],
        }
        return pool

    def _seed(self, host: IiifHost, pages: list) -> None:
        from model.inference.registry import discover

        settings = Settings()
        info = discover(settings.model_dirs)[settings.models.default]
        device = "cuda:0" if self.o.gpu else "cpu"
        urls = [host.full_url(p) for p in pages]
        self.results["seed_style"] = {
            "backend": f"torch ({device})",
            "B_load_once_per_task": self.phase(
                "seed-style B (model loaded once per task)",
                lambda: seed_style.run(urls, info.weights, info.imgsz, device, False),
                per=PER_PAGE,
            ),
            "A_reload_per_image": self.phase(
                "seed-style A (model loaded for every image)",
                lambda: seed_style.run(urls, info.weights, info.imgsz, device, True),
                per=PER_PAGE,
            ),
        }

    def _requests_per_page(self, host: IiifHost, manifests: dict) -> None:
        """Requests the image server sees per page: the same book behind a service declaring
        level 2 (the request computed from the manifest) and level 0 without sizes (each
        page's info.json first: these services are new to the worker's info.json cache)."""
        found = {}
        for level in ("level2", "level0"):
            key = "negotiated" if level == "level2" else level
            run = self.phase(
                f"requests per page: {level} host",
                lambda k=key: service.run_manifest(self.api, host, manifests[k]),
                per=PER_PAGE,
            )
            run.pop("_body")
            pages, kinds = run["pages"] or 1, run["requests_by_kind"]
            found[level] = {
                **run,
                # Image API requests only: the manifest's own request is the task's, not a page's.
                "requests_per_page": (kinds["info.json"] + kinds["full"] + kinds["sized"]) / pages,
                "info_json_per_page": kinds["info.json"] / pages,
                "full_size_requests": kinds["full"],
            }
        self.results["requests_per_page"] = found

    def _scaling(self, host: IiifHost, pages: list) -> None:
        scaling = {}
        for n in self.o.scaling:
            url = host.manifest(f"scale-{n}", pages[:n])
            run = self.phase(
                f"scaling N={n}",
                lambda u=url: service.run_manifest(self.api, host, u),
                per=PER_PAGE,
            )
            run.pop("_body")
            scaling[str(n)] = run
        self.results["scaling"] = scaling

    def _status(self, single_manifest: str) -> None:
        o = self.o
        task_id = self.api.submit_ok({"type": "detect", "input": {"manifest_url": single_manifest}})
        body, _ = bench_stack.wait_terminal(self.api, task_id)
        base = self.stack.base_url
        headers = {"X-API-Key": self.key}
        status_url = f"{base}/status/{task_id}"
        size = len(self.api.status(task_id).content)
        if self.wanted("profile"):
            self.results["profile"] = self.phase(
                "profile: /status, noop submit, /healthz in process",
                lambda: profile_api.measure(
                    self.stack.settings(), self.key, task_id, o.profile_calls
                ),
            )
        if not self.wanted("status"):
            return
        wrk.run(f"{base}/healthz", 2, connections=o.wrk_connections)  # warm both paths up
        wrk.run(status_url, 2, headers, connections=o.wrk_connections)
        healthz = self.phase(
            "wrk /healthz",
            lambda: wrk.run(f"{base}/healthz", o.wrk_seconds, connections=o.wrk_connections),
            per=PER_REQUEST,
        )
        status = self.phase(
            "wrk /status",
            lambda: wrk.run(status_url, o.wrk_seconds, headers, connections=o.wrk_connections),
            per=PER_REQUEST,
        )
        self.results["status_load"] = {
            "status_task": f"a finished one-page detect task ({body['state']}, {size} bytes)",
            "healthz": healthz,
            "status": status,
            "ratio_rps": round(status["requests_per_s"] / healthz["requests_per_s"], 3),
        }

    def _memory(self, host: IiifHost, pages: list, single_manifest: str) -> None:
        # The pool processes that run tasks (each holds the models), after one task each ran.
        for _ in range(len(self.stack.pool_children())):
            task_id = self.api.submit_ok(
                {"type": "detect", "input": {"manifest_url": single_manifest}}
            )
            bench_stack.wait_terminal(self.api, task_id)
        pids = self.stack.pool_children()
        urls = [host.size_url(p) for p in pages[: self.o.pages]]
        self.results["memory"] = self.phase(
            f"memory ({self.o.memory_tasks} tasks)",
            lambda: memory.measure(self.api, pids, urls, self.o.memory_tasks, window=50),
            per=("task", lambda r: r["tasks"]),
        )

    def _summarise(self) -> None:
        r = self.results
        if "raw" in r:
            for name, rounds in r["raw"]["rounds"].items():
                if rounds:
                    r["raw"][name] = {
                        "pages_per_s": statistics.median(x["pages_per_s"] for x in rounds),
                        "latency_median_ms": statistics.median(
                            x["latency_median_ms"] for x in rounds
                        ),
                    }
            timed = {n: r["raw"][n] for n in r["raw"]["rounds"] if n in r["raw"]}
            if timed:
                best = max(timed, key=lambda n: timed[n]["pages_per_s"])
                r["raw"]["best_backend"] = best
                r["raw"]["pages_per_s"] = timed[best]["pages_per_s"]
        e2e = r.get("raw_e2e")
        if e2e and e2e["rounds"]:
            for key in ("pages_per_s", "decode_cpu_ms_per_page", "inference_cpu_ms_per_page"):
                e2e[key] = statistics.median(x[key] for x in e2e["rounds"])
        negotiated = r.get("service", {}).get("negotiated")
        if negotiated and negotiated["rounds"]:
            rounds = negotiated["rounds"]
            negotiated["pages_per_s"] = statistics.median(x["pages_per_s"] for x in rounds)
            negotiated["time_to_first_page_s"] = statistics.median(
                x["time_to_first_page_s"] for x in rounds
            )
            negotiated["image_bytes"] = rounds[0]["image_bytes"]


def _model_card() -> dict[str, Any]:
    """Which model the figures are about (the default one, as the worker loads it)."""
    from model.inference.registry import discover

    settings = Settings()
    info = discover(settings.model_dirs)[settings.models.default]
    return {"name": info.name, "sha256": info.sha256, "imgsz": info.imgsz}


def _imgsz(settings: Settings) -> int:
    from model.inference.registry import discover

    return discover(settings.model_dirs)[settings.models.default].imgsz


def _batch(settings: Settings) -> int:
    return settings.worker.batch_size

"""`python -m bench.design_probe`: the measurement behind how a worker runs tasks side by side.

The CPU work of a page once it is downloaded — decode a negotiated JPEG (`decode_within`, as
the worker does) and `predict` it — done by W workers at once, two ways:

- W processes, each with its own detector (Celery prefork, one model per process), ONNX
  Runtime with 1 or 2 intra-op threads each;
- W threads of one process sharing one detector, `predict` taken in turn (the thread-pool
  design: task runners feeding one inference loop), ONNX Runtime with 2 threads.

Every layout runs in forked processes that load their detector before the clock starts.

Prints pages/s per layout, alternating them over rounds (the machine is shared: compare within
a round), and writes bench/results/tmp/design-probe-<date>.md (the recorded one is in git
history). No stack, no network.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import statistics
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "tmp"


def _sample_jpeg() -> bytes:
    """A page as size negotiation fetches it (~1600 px): what a download thread decodes."""
    from synthetic import render_page

    buffer = io.BytesIO()
    render_page(900_123, 1600, 1900, n_illustrations=2).image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _detector(threads: int) -> Any:
    from model.inference.detector import YoloDetector
    from model.inference.offline import configure_offline
    from model.inference.registry import discover
    from model.settings import Settings

    settings = Settings()
    configure_offline(settings.data_path / "ultralytics")
    info = discover(settings.model_dirs)[settings.models.default]
    return YoloDetector(info, "onnx", threads)


def _pages(detector: Any, data: bytes, count: int, lock: threading.Lock | None = None) -> None:
    from model.sources.images import decode_within

    for _ in range(count):
        image, _, _ = decode_within(data, 10**9, detector.imgsz, None, reduce=True)
        if lock is None:
            detector.predict([image], 0.25, 0.45)
        else:
            with lock:  # one inference loop: pages of every task go through it in turn
                detector.predict([image], 0.25, 0.45)


def _process(threads: int, runners: int, data: bytes, count: int, go: Any, out: Any) -> None:
    """One process with its own detector; `runners` > 1: that many task threads share it."""
    detector = _detector(threads)
    _pages(detector, data, 2)  # warm up
    lock = threading.Lock() if runners > 1 else None
    each = count // runners
    workers = [
        threading.Thread(target=_pages, args=(detector, data, each, lock)) for _ in range(runners)
    ]
    out.put("ready")
    go.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(time.perf_counter() - started)


def measure(processes: int, threads: int, data: bytes, pages: int, runners: int = 1) -> float:
    """Pages/s of `processes` processes (each `runners` task threads) doing `pages` in all,
    started together once every detector is loaded. The probe's own process never loads one,
    so forking stays safe (torch's and ONNX Runtime's thread pools do not survive a fork)."""
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    each = pages // processes
    procs = [
        ctx.Process(target=_process, args=(threads, runners, data, each, go, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        out.get()
    started = time.perf_counter()
    go.set()
    for _ in procs:
        out.get()
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join()
    return each // runners * runners * processes / wall


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.design_probe", description=__doc__)
    parser.add_argument("--pages", type=int, default=160, help="pages per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = _sample_jpeg()
    pages = args.pages
    layouts = {
        "1 process, ONNX Runtime 2 threads": lambda: measure(1, 2, data, pages),
        "1 process, ONNX Runtime 1 thread": lambda: measure(1, 1, data, pages),
        "2 processes, 1 thread each": lambda: measure(2, 1, data, pages),
        "4 processes, 1 thread each": lambda: measure(4, 1, data, pages),
        "4 processes, 2 threads each (oversubscribed)": lambda: measure(4, 2, data, pages),
        "1 process, 2 task threads sharing one model (2 threads)": lambda: measure(
            1, 2, data, pages, runners=2
        ),
        "1 process, 4 task threads sharing one model (2 threads)": lambda: measure(
            1, 2, data, pages, runners=4
        ),
    }
    found: dict[str, list[float]] = {name: [] for name in layouts}
    for round_no in range(args.rounds):
        for name, run in layouts.items():
            found[name].append(run())
            print(f"round {round_no + 1}: {name}: {found[name][-1]:.1f} pages/s", flush=True)
    base = statistics.median(found["1 process, ONNX Runtime 2 threads"])
    lines = [
        f"# Design probe — {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        "",
        f"Decode (negotiated JPEG ~1600 px) + predict, {args.pages} pages per measurement, "
        f"median of {args.rounds} alternating rounds; `python -m bench.design_probe`.",
        "",
        "| Layout | pages/s (median) | rounds | vs 1 process, 2 threads |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in found.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {median:.1f} | {rounds} | {median / base:.2f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"design-probe-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text)
    print()
    print(text)
    print(f"written: {path}")


if __name__ == "__main__":
    main()

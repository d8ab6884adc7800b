"""`python -m bench` (`make bench`): the whole benchmark in one run; see bench/README.md.

Environment defaults (flags override): BENCH_N (pages), BENCH_LATENCY_MS, BENCH_ROUNDS.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from bench import chart, report
from bench.run import PARTS, Options, Run

RESULTS = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _parts(text: str) -> set[str]:
    parts = {p.strip() for p in text.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(unknown)}; known: {PARTS}")
    return parts


def parse(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--pages", type=int, default=int(env("BENCH_N", "50")), help="N (BENCH_N)")
    p.add_argument("--latency-ms", type=float, default=float(env("BENCH_LATENCY_MS", "50")))
    p.add_argument("--seed-pages", type=int, help="pages of the seed-style runs (default N)")
    p.add_argument(
        "--rounds",
        type=int,
        default=int(env("BENCH_ROUNDS", "2")),
        help="alternating raw/service rounds",
    )
    p.add_argument("--scaling", type=_ints, default=[10, 50, 200], help="e.g. 10,50,200")
    p.add_argument("--noop-tasks", type=int, default=200)
    p.add_argument("--poll-ms", type=float, default=2.0, help="status polling of noop tasks")
    p.add_argument("--wrk-seconds", type=int, default=10)
    p.add_argument("--wrk-connections", type=int, default=16)
    p.add_argument("--profile-calls", type=int, default=2000, help="/status calls profiled")
    p.add_argument("--cancel-pages", type=int, default=200)
    p.add_argument("--memory-tasks", type=int, default=500)
    p.add_argument("--slow-hosts", type=int, default=4, help="K: tasks from K slow hosts")
    p.add_argument(
        "--slow-latency-ms", type=float, default=200.0, help="L: each slow host's latency"
    )
    p.add_argument("--big-pages", type=int, default=500, help="the big task of small-behind-big")
    p.add_argument("--small-samples", type=int, default=5)
    p.add_argument(
        "--book-pages", type=int, default=10_000, help="canvases of the book10k phase's manifest"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="worker.concurrency of the stack (default: the configured one; 1 = one at a time)",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        help="inference.cpu_threads of the stack (default: the configured one, 0 = cores shared)",
    )
    p.add_argument("--only", type=_parts, help=f"run only these parts: {','.join(PARTS)}")
    p.add_argument("--skip", type=_parts, default=set(), help="leave these parts out")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in ~3 min: N=10, 1 round, small counts (not for the record)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="CUDA machine: torch/CUDA for raw and seed-style, results named gpu-*",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the stack's temp data dir")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    o = Options(
        pages=args.pages,
        latency_ms=args.latency_ms,
        seed_pages=args.seed_pages or args.pages,
        rounds=args.rounds,
        scaling=args.scaling,
        noop_tasks=args.noop_tasks,
        poll_ms=args.poll_ms,
        wrk_seconds=args.wrk_seconds,
        wrk_connections=args.wrk_connections,
        profile_calls=args.profile_calls,
        cancel_pages=args.cancel_pages,
        memory_tasks=args.memory_tasks,
        slow_hosts=args.slow_hosts,
        slow_latency_ms=args.slow_latency_ms,
        big_pages=args.big_pages,
        small_samples=args.small_samples,
        book_pages=args.book_pages,
        concurrency=args.concurrency,
        cpu_threads=args.cpu_threads,
        parts=set(args.only or PARTS) - args.skip,
        gpu=args.gpu,
        cache_dir=args.out / "tmp" / "pages",
        keep=args.keep,
    )
    if args.quick:
        o.pages, o.seed_pages, o.rounds = 10, 5, 1
        o.scaling, o.noop_tasks, o.wrk_seconds = [5, 10, 20], 40, 3
        o.profile_calls = 400
        o.cancel_pages, o.memory_tasks = 40, 50
        o.big_pages, o.small_samples = 100, 3
        o.book_pages = 500
        o.vectorize_diagrams = 20
    return o


def main(argv: list[str]) -> int:
    args = parse(argv)
    # A plain `kill` must still stop the stack the run started (the `finally` blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    results = Run(options(args)).execute()
    results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    kind = "gpu" if args.gpu else "cpu"
    stem = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}" + ("-quick" if args.quick else "")
    if args.concurrency:
        stem += f"-c{args.concurrency}"
    if args.cpu_threads is not None:
        stem += f"-t{args.cpu_threads}"
    # latest.* is the last whole run with the configured worker; the others go to tmp/.
    configured = args.concurrency is None and args.cpu_threads is None
    whole = configured and not (args.quick or args.only or args.skip)
    paths = report.write(results, args.out, stem, latest=whole)
    png = chart.write(results, paths["md"].with_suffix(".png"))
    print()
    print(paths["md"].read_text())
    if "cluster" in results:
        from bench import cluster

        print(cluster.markdown(results["cluster"]))
    print(f"written: {', '.join(str(p) for p in [*paths.values(), png] if p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

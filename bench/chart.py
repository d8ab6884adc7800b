"""The PNG: pages/s per pipeline (log scale: seed-style and raw differ by orders of magnitude)
and request latencies (wrk percentiles of /status and /healthz, noop task vs Celery ping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter


def _throughputs(r: dict[str, Any]) -> list[tuple[str, float]]:
    bars: list[tuple[str, float]] = []
    for name in ("onnx", "torch"):
        if value := (r.get("raw", {}).get(name) or {}).get("pages_per_s"):
            bars.append((f"raw {name}", value))
    if value := (r.get("raw_e2e") or {}).get("pages_per_s"):
        bars.append(("raw end to end", value))
    service = r.get("service", {})
    if value := service.get("negotiated", {}).get("pages_per_s"):
        bars.append(("service (negotiated)", value))
    if value := (service.get("full_size") or {}).get("pages_per_s"):
        bars.append(("service (full size)", value))
    for n, run in (r.get("scaling") or {}).items():
        bars.append((f"service N={n}", run["pages_per_s"]))
    if slow := r.get("slow_hosts"):
        bars.append(("one task, zero-latency host", slow["baseline_pages_per_s"]))
        bars.append(
            (
                f"{slow['hosts']} tasks, {slow['hosts']} hosts at {slow['latency_ms']:g} ms",
                slow["aggregate_pages_per_s"],
            )
        )
    seed = r.get("seed_style") or {}
    if value := (seed.get("B_load_once_per_task") or {}).get("pages_per_s"):
        bars.append(("seed-style B (load/task)", value))
    if value := (seed.get("A_reload_per_image") or {}).get("pages_per_s"):
        bars.append(("seed-style A (load/image)", value))
    return bars


def _latencies(r: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(label, median ms, p99 ms)."""
    bars = []
    load = r.get("status_load") or {}
    for name in ("healthz", "status"):
        if run := load.get(name):
            bars.append((f"GET /{name} (wrk)", run.get("p50_ms", 0.0), run.get("p99_ms", 0.0)))
    overhead = r.get("overhead") or {}
    if ping := overhead.get("celery_ping_round_trip"):
        bars.append(("Celery ping round trip", ping["median_ms"], ping["p99_ms"]))
    if noop := overhead.get("noop_submit_to_terminal"):
        bars.append(("noop task submit→end", noop["median_ms"], noop["p99_ms"]))
    return bars


def write(r: dict[str, Any], path: Path) -> Path | None:
    throughputs, latencies = _throughputs(r), _latencies(r)
    if not throughputs and not latencies:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    if throughputs:
        labels, values = zip(*throughputs, strict=True)
        left.barh(labels, values, color="#4c72b0")
        left.set_xscale("log")
        ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= max(values) * 2]
        left.set_xticks(ticks, [f"{t:g}" for t in ticks])
        left.xaxis.set_minor_formatter(NullFormatter())
        left.invert_yaxis()
        left.set_xlabel("pages/s (log scale)")
        left.set_title("Throughput per pipeline")
        for y, v in enumerate(values):
            left.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    if latencies:
        labels = [b[0] for b in latencies]
        ys = range(len(latencies))
        right.barh([y - 0.2 for y in ys], [b[1] for b in latencies], 0.4, label="median")
        right.barh([y + 0.2 for y in ys], [b[2] for b in latencies], 0.4, label="p99")
        right.set_yticks(list(ys), labels)
        right.invert_yaxis()
        right.set_xlabel("ms")
        right.set_title("Status and round-trip latency")
        right.legend()
    meta = r.get("meta", {})
    fig.suptitle(
        f"Scriptorium bench {meta.get('started_at', '')} — {meta.get('cpus')} CPUs, "
        f"GPU: {meta.get('gpu', 'none')}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

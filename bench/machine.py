"""What the numbers were measured on, and how busy the machine was meanwhile (it is shared:
other engineers' test runs compete for the same cores, which is why every figure is a ratio)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from testkit.stack import PROJECT_ROOT

PACKAGES = ("torch", "ultralytics", "onnxruntime", "celery", "gunicorn", "flask", "redis")


def describe() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git(),
    }


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        except OSError:  # no git on this machine (a bare GPU box)
            return ""
        return done.stdout.strip()

    return {"commit": run("rev-parse", "--short", "HEAD"), "dirty": bool(run("status", "--short"))}


class LoadMonitor:
    """Per phase: load average, whole-machine CPU busy %, and the share used by processes
    outside this benchmark's own process tree (the stack included in ours)."""

    def __init__(self) -> None:
        self.phases: list[dict[str, Any]] = []
        self._me = psutil.Process()

    def _ours(self) -> set[int]:
        return {self._me.pid, *(p.pid for p in self._me.children(recursive=True))}

    def _cpu_times(self) -> tuple[float, float]:
        """(CPU seconds of foreign processes, total CPU seconds of the machine)."""
        ours = self._ours()
        foreign = 0.0
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            if proc.info["pid"] in ours or proc.info["cpu_times"] is None:
                continue
            times = proc.info["cpu_times"]
            foreign += times.user + times.system
        return foreign, time.monotonic()

    def start(self, name: str) -> None:
        psutil.cpu_percent(None)
        foreign, at = self._cpu_times()
        self.phases.append(
            {"phase": name, "_foreign": foreign, "_at": at, "load_start": os.getloadavg()[0]}
        )

    def stop(self) -> None:
        phase = self.phases[-1]
        foreign, at = self._cpu_times()
        elapsed = max(at - phase.pop("_at"), 1e-6)
        # A foreign process that exits during the phase drops out of the sum: clamp at 0.
        foreign_cores = max(0.0, foreign - phase.pop("_foreign")) / elapsed
        phase.update(
            seconds=round(elapsed, 1),
            load_end=os.getloadavg()[0],
            machine_busy_pct=psutil.cpu_percent(None),
            foreign_cpu_cores=round(foreign_cores, 2),
        )

    def heavy_foreign_processes(self, limit: int = 5) -> list[str]:
        ours = self._ours()
        procs = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.info["pid"] not in ours]
        for proc in procs:
            try:
                proc.cpu_percent(None)
            except psutil.Error:
                continue
        time.sleep(1.0)
        busy = []
        for proc in procs:
            try:
                pct = proc.cpu_percent(None)
            except psutil.Error:
                continue
            if pct >= 5:
                cmd = " ".join(proc.info["cmdline"] or [])[:90]
                busy.append((pct, f"{pct:.0f}% {cmd}"))
        return [text for _, text in sorted(busy, reverse=True)[:limit]]

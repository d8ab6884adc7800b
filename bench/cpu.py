"""CPU time per unit of work (page, request, task), by process: the benchmark process itself
(raw inference, or the IIIF host and the polling client), and the stack's programs (worker,
gunicorn, nginx, redis). Wall-clock ratios on a shared machine move with other people's load;
CPU time per page says what each pipeline costs, and so what bounds a ratio."""

from __future__ import annotations

import resource

import psutil

GROUPS = (("celery", "worker"), ("gunicorn", "gunicorn"), ("nginx", "nginx"), ("redis", "redis"))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    def __init__(self, stack_root_pid: int | None = None) -> None:
        self.root = stack_root_pid

    def snapshot(self) -> dict[str, float]:
        """CPU seconds used so far: this process (`bench`), and each group of stack programs
        (processes that ended meanwhile drop out: a group's delta is then a lower bound)."""
        found = {"bench": _own_cpu()}
        if self.root is None:
            return found
        try:
            processes = psutil.Process(self.root).children(recursive=True)
        except psutil.Error:
            return found
        for proc in processes:
            try:
                cmd = " ".join(proc.cmdline())
                times = proc.cpu_times()
            except psutil.Error:
                continue
            group = next((name for marker, name in GROUPS if marker in cmd), None)
            if group:
                found[group] = found.get(group, 0.0) + times.user + times.system
        return found

    @staticmethod
    def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict:
        out = {
            group: round((after[group] - before.get(group, 0.0)) / units * 1000, 3)
            for group in after
        }
        out["total"] = round(sum(out.values()), 3)
        return out

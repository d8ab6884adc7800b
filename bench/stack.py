"""The real stack for the benchmark: `python -m model stack` (supervisord: redis, Celery worker,
gunicorn, nginx) in a temporary data dir on free ports — the tests' own starter, with the
settings the benchmark needs and nothing else changed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import requests

from model.settings import Settings
from testkit.stack import PROJECT_ROOT, Api, Stack, free_port, launch

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}


def has_nginx() -> bool:
    return (PROJECT_ROOT / "config/supervisor/nginx.conf").exists() and bool(
        shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    )


def start(
    data_dir: Path, extra: dict[str, str] | None = None, default_cache: bool = False
) -> tuple[Stack, dict[str, str]]:
    """Start the stack (with `extra` SCRIPTORIUM_* settings); returns it and notes on how it was
    configured. `default_cache`: the detection cache as configured (the book10k phase)."""
    notes = {}
    settings = {
        **(extra or {}),
        "SCRIPTORIUM_LIMITS__MAX_QUEUED_TOTAL": "5000",
    }
    if default_cache:
        notes["detection_cache"] = "as configured (identical pages: inferred once)"
    else:
        # The detection cache would answer repeated pages without inference: the benchmark
        # measures inference, so it is off (runs repeat the same pages).
        settings["SCRIPTORIUM_CACHE__TTL_S"] = "0"
        notes["detection_cache"] = "disabled (cache.ttl_s=0): every page is inferred"
    http_port = free_port()
    if not has_nginx():
        # Without nginx gunicorn itself must listen on the public port.
        settings["SCRIPTORIUM_GUNICORN_BIND"] = f"127.0.0.1:{http_port}"
        notes["entry_point_fallback"] = "nginx not available: gunicorn serves the port itself"
    return launch(data_dir, settings, ready_timeout_s=300, http_port=http_port), notes


def bench_key(stack: Stack) -> str:
    """A key no rate, queue or running limit gets in the way of (wrk sends thousands of
    requests/s; the phases measure what the whole worker does for one key)."""
    return stack.create_key(
        "bench", "--rate", "1000000/second", "--max-queued", "5000", "--max-running", "0"
    )


def entry_point(base_url: str) -> str:
    """What answers on the public port: nginx or gunicorn (their Server header)."""
    server = requests.get(base_url + "/healthz", timeout=5).headers.get("Server", "")
    return server.split("/")[0] or "unknown"


def stack_settings(stack: Stack) -> Settings:
    """The stack's settings as the processes read them (SCRIPTORIUM_* of its environment)."""
    return stack.settings()


def celery_client(stack: Stack) -> Any:
    from model.celery_app import make_celery  # only stack parts need Celery installed

    return make_celery(stack_settings(stack))


def wait_terminal(
    api: Api, task_id: str, poll_s: float = 0.02, timeout_s: float = 900
) -> tuple[dict[str, Any], float]:
    """Poll until the task ends; returns the final body and the monotonic time it was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = api.status(task_id).json()
        if body.get("state") in TERMINAL:
            return body, time.monotonic()
        time.sleep(poll_s)
    raise TimeoutError(f"task {task_id} did not finish in {timeout_s} s")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"no {field} for pid {pid}")


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS), in KiB."""
    return _status_kib(pid, "VmRSS")


def peak_kib(pid: int) -> int:
    """The largest resident set size the process ever had (VmHWM), in KiB."""
    return _status_kib(pid, "VmHWM")

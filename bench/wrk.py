"""HTTP load with wrk (Debian package): GET /status/<id> against the trivial /healthz route, both
through the same public entry point (nginx + gunicorn), one after the other in the same run."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_DURATION = r"([\d.]+)(us|ms|s)"


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and non-2xx count from `wrk --latency` output."""
    found: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        found["requests_per_s"] = float(match.group(1))
    for pct in ("50", "75", "90", "99"):
        if match := re.search(rf"^\s+{pct}%\s+{_DURATION}", output, re.MULTILINE):
            found[f"p{pct}_ms"] = round(_ms(match.group(1), match.group(2)), 3)
    if match := re.search(r"(\d+) requests in", output):
        found["requests"] = int(match.group(1))
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        found["non_2xx"] = int(match.group(1))
    if match := re.search(r"Socket errors: (.*)", output):
        found["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", match.group(1)))
    return found


def run(
    url: str,
    seconds: int,
    headers: dict[str, str] | None = None,
    threads: int = 1,
    connections: int = 16,
) -> dict[str, Any]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result = parse(done.stdout)
    result.update(threads=threads, connections=connections, seconds=seconds)
    return result

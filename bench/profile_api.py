"""Where an API call's time goes: `GET /status/<id>` and a noop `POST /task`, profiled.

The stack's own Flask app (`create_app` with the stack's settings: its Redis, its key database,
its Celery broker) runs in this process, driven by Flask's test client, so every hook and view
of the real request path runs; only gunicorn's and nginx's parts (the socket, HTTP parsing) are
left out, and those are what `/healthz` costs too. py-spy would sample gunicorn itself but
cannot attach to a running process on every machine (ptrace rights); this needs none.

The profiler samples on CPU time (SIGPROF, `CpuSampler`): on a machine shared with other
work, wall-clock profiles mostly measure waiting for a core, while the CPU a call costs is what
bounds requests/s under load. Each sample goes to the innermost part of the request path on
its stack (a key lookup made by the rate limiter is the key lookup's), and the share of it
spent in the Redis client (packing commands, parsing replies) is counted apart. Redis round
trips are counted exactly, by the part that sent them (a pipeline or a script is one).
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# (part, test on a frame's file path and function name): the innermost match names a sample.
PARTS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("key lookup (cache, SQLite)", lambda f, fn: f.endswith("model/keys.py")),
    ("auth hook", lambda f, fn: f.endswith("model/api/auth.py")),
    (
        "rate limit (model/api/limits.py, limits)",
        lambda f, fn: "/flask_limiter/" in f or "/limits/" in f or f.endswith("api/limits.py"),
    ),
    # /status reads the task and counts the request in one pipeline (`_read_snapshot`).
    (
        "task store (Redis scripts; /status: with the rate-limit count)",
        lambda f, fn: f.endswith("model/tasks/store.py") or fn == "_read_snapshot",
    ),
    ("queue position / fairness", lambda f, fn: f.endswith(("fleet.py", "fairness.py"))),
    ("metrics", lambda f, fn: "/model/metrics/" in f),
    ("Celery publish", lambda f, fn: "/celery/" in f or "/kombu/" in f),
    ("submit checks", lambda f, fn: f.endswith(("api/submit.py", "api/admission.py"))),
    ("pydantic", lambda f, fn: "/pydantic/" in f or "/pydantic_core/" in f),
    ("JSON", lambda f, fn: "/json/" in f),
]
FRAMEWORK = "Flask, Werkzeug, flask-openapi3 (routing, hooks, request and response objects)"
SAMPLE_S = 0.0005  # CPU seconds between samples


def _part(path: str, function: str) -> str | None:
    return next((name for name, test in PARTS if test(path, function)), None)


class CpuSampler:
    """SIGPROF every `interval_s` of the process's CPU time (setitimer ITIMER_PROF); each
    sample is the main thread's stack, named by its innermost part."""

    def __init__(self, interval_s: float = SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.samples: dict[str, dict[str, int]] = {}

    def _sample(self, signum: int, frame: Any) -> None:
        part, redis = FRAMEWORK, False
        while frame is not None:  # innermost first: the first part found wins
            path = frame.f_code.co_filename
            redis = redis or "/redis/" in path
            if part == FRAMEWORK:
                part = _part(path, frame.f_code.co_name) or FRAMEWORK
            frame = frame.f_back
        slot = self.samples.setdefault(part, {"n": 0, "redis": 0})
        slot["n"] += 1
        slot["redis"] += int(redis)

    def __enter__(self) -> CpuSampler:
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._previous)


@contextmanager
def round_trips() -> Iterator[dict[str, int]]:
    """Redis commands sent (a pipeline or a script is one round trip), by the part that sent
    them, counted while the block runs."""
    from redis.connection import Connection

    counted: dict[str, int] = {}
    send = Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        frames = traceback.extract_stack()[:-1]
        part = next((p for f in reversed(frames) if (p := _part(f.filename, f.name))), FRAMEWORK)
        counted[part] = counted.get(part, 0) + 1
        send(self, command, check_health)

    Connection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        Connection.send_packed_command = send  # type: ignore[method-assign]


def profile(call: Callable[[], Any], calls: int, counted_calls: int = 20) -> dict[str, Any]:
    """CPU ms per call by part (sampled), and Redis round trips per call by part (counted)."""
    for _ in range(20):  # warm: connections, lazy imports, caches
        call()
    with round_trips() as sent:
        for _ in range(counted_calls):
            call()
    started, cpu_started = time.perf_counter(), time.process_time()
    with CpuSampler() as sampler:
        for _ in range(calls):
            call()
    cpu_ms = (time.process_time() - cpu_started) / calls * 1000
    wall_ms = (time.perf_counter() - started) / calls * 1000
    total = sum(v["n"] for v in sampler.samples.values()) or 1
    parts = {
        name: {
            "cpu_ms": round(cpu_ms * v["n"] / total, 4),
            "share": round(v["n"] / total, 4),
            "redis_client_share": round(v["redis"] / total, 4),
            "round_trips": sent.get(name, 0) / counted_calls,
        }
        for name, v in sorted(sampler.samples.items(), key=lambda kv: -kv[1]["n"])
    }
    for name, n in sent.items():  # a part that sent commands but took no sample
        parts.setdefault(
            name,
            {"cpu_ms": 0.0, "share": 0.0, "redis_client_share": 0.0, "round_trips": n / 20},
        )
    return {
        "calls": calls,
        "samples": total,
        "cpu_ms_per_call": round(cpu_ms, 4),
        "wall_ms_per_call": round(wall_ms, 4),
        "redis_round_trips_per_call": sum(sent.values()) / counted_calls,
        "parts": parts,
    }


def measure(settings: Any, key: str, task_id: str, calls: int) -> dict[str, Any]:
    """The profiles of GET /status/<task_id>, a noop POST /task and GET /healthz."""
    from model.api.app import create_app

    app = create_app(settings)
    client = app.test_client()
    headers = {"X-API-Key": key}

    def status() -> None:
        resp = client.get(f"/status/{task_id}", headers=headers)
        assert resp.status_code == 200, resp.status_code

    def healthz() -> None:
        assert client.get("/healthz").status_code == 200

    def submit() -> None:
        resp = client.post("/task", json={"type": "noop"}, headers=headers)
        assert resp.status_code == 202, resp.get_data(as_text=True)[:200]

    found = {
        "how": "the stack's app in the benchmark process (create_app, Flask test client), "
        "sampled on CPU time",
        "status": profile(status, calls),
        "healthz": profile(healthz, calls),
        "noop_submit": profile(submit, max(50, calls // 4)),
    }
    _drain(app.extensions["scriptorium"].store)
    return found


def _drain(store: Any, timeout_s: float = 300) -> None:
    """Wait until the worker has run the noop tasks submitted here: later phases must not
    share the CPU with them."""
    from model.keyspace import RUNNING_KEY

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.queued_count() == 0 and not store.redis.scard(RUNNING_KEY):
            return
        time.sleep(0.2)


def summary_lines(found: dict[str, Any] | None) -> list[str]:
    """The profiles as a markdown table (CPU ms per call by part, round trips)."""
    if not found:
        return []
    status, submit, healthz = found["status"], found["noop_submit"], found["healthz"]
    names = list(dict.fromkeys([*status["parts"], *submit["parts"]]))

    def cell(run: dict[str, Any], name: str) -> str:
        part = run["parts"].get(name)
        if not part:
            return "—"
        notes = [f"{part['share']:.0%}"]
        if part["redis_client_share"] >= 0.005:
            notes.append(f"Redis client {part['redis_client_share']:.0%}")
        if part["round_trips"]:
            notes.append(f"{part['round_trips']:g} round trip(s)")
        return f"{part['cpu_ms']:.3f} ({', '.join(notes)})"

    def whole(run: dict[str, Any]) -> str:
        return (
            f"{run['cpu_ms_per_call']:.3f} CPU, {run['wall_ms_per_call']:.3f} wall; "
            f"{run['redis_round_trips_per_call']:g} round trip(s)"
        )

    return [
        "",
        "## Where an API call's time goes (profile, CPU ms per call)",
        "",
        f"{found['how']}: {status['calls']} `GET /status` of the finished task, "
        f"{submit['calls']} noop `POST /task`. Each CPU sample goes to the innermost part on "
        "its stack (in brackets: share of the call's CPU, the part's share inside the Redis "
        "client, Redis round trips it sends per call, counted). gunicorn and nginx add the "
        "same per request to every route (/healthz's cost under wrk).",
        "",
        "| Part | GET /status | noop POST /task |",
        "| --- | --- | --- |",
        *[f"| {name} | {cell(status, name)} | {cell(submit, name)} |" for name in names],
        f"| **whole call** | {whole(status)} | {whole(submit)} |",
        f"| GET /healthz, the same way (the framework floor) | {whole(healthz)} | |",
    ]

"""Start and stop the real stack (supervisord running redis, the Celery worker and gunicorn) for
tests, on free ports in a temporary data dir — the same `python -m model stack` a user runs —
and worker-only hosts reaching a stack's Redis through the Redis tunnel (role worker)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from testkit.live import require_live

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Supervised:
    """A supervisord of ours: its data dir, environment and process."""

    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "model", *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def ctl(self, *args: str) -> str:
        return self.cli("ctl", *args).stdout

    def program_pid(self, name: str) -> int:
        return int(self.ctl("pid", name).strip())

    def settings(self) -> Any:
        """The stack's settings as its processes read them (its SCRIPTORIUM_* environment)."""
        from model.settings import Settings

        saved = dict(os.environ)
        try:
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("SCRIPTORIUM_")})
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def pool_children(self) -> list[int]:
        """The worker's prefork children (each runs one task at a time, with the models)."""
        try:
            main = self.program_pid("worker")
        except ValueError:  # the worker is not running (restarting)
            return []
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(main)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def task_process(self, task_id: str) -> int | None:
        """The pool child running a task now (None: not running, or its child is gone)."""
        from model.keyspace import task_key

        client = self.redis()
        try:
            state, pid = client.hmget(task_key(task_id), "state", "worker_pid")
        finally:
            client.close()
        if state != "RUNNING" or not pid or int(pid) not in self.pool_children():
            return None
        return int(pid)

    def log(self, name: str) -> str:
        return (self.data_dir / "logs" / f"{name}.log").read_text(errors="replace")

    def log_lines(self, name: str, needle: str, count: int = 1, timeout_s: float = 5) -> list[str]:
        """Lines of a program's log naming `needle`, once at least `count` of them are there
        or the timeout passed: supervisord writes program logs with a delay."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = [line for line in self.log(name).splitlines() if needle in line]
            if len(lines) >= count or time.monotonic() >= deadline:
                return lines
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Stack(Supervised):
    base_url: str = ""
    keys: dict[str, str] = field(default_factory=dict)

    def create_key(self, name: str, *options: str) -> str:
        result = self.cli("keys", "create", name, *options)
        assert result.returncode == 0, result.stderr
        self.keys[name] = result.stdout.strip()
        return self.keys[name]

    def client(self, key: str | None) -> Api:
        return Api(self.base_url, key)

    def redis(self) -> redis.Redis:
        """A client of the stack's own Redis (its password is generated at setup)."""
        port = int(self.env["SCRIPTORIUM_REDIS__PORT"])
        return redis.Redis(port=port, password=self.redis_password(), decode_responses=True)

    def reset_auth_failures(self) -> None:
        """Forget failed authentications (one budget for every client of a shared stack)."""
        client = self.redis()
        for name in client.scan_iter("*sc:auth-failures*"):
            client.delete(name)

    def redis_password(self) -> str:
        return (self.data_dir / "secrets" / "redis_password").read_text().strip()


@dataclass
class WorkerHost(Supervised):
    """A worker-only host: its own supervisord, data dir and models, another stack's Redis."""

    name: str = ""

    def kill_host(self) -> None:
        """SIGKILL to everything it runs (supervisord, the worker and its pool): a host that
        dies. Supervisord gives each program a process group of its own; they all stay in the
        session it was started in."""
        session = self.process.pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == session:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(stat.parent.name), signal.SIGKILL)
        self.process.wait(timeout=30)


def launch_worker_host(
    data_dir: Path, main: Stack, name: str, settings: dict[str, str], ready_timeout_s: float = 180
) -> WorkerHost:
    """A worker-only host (`role: worker`) in `data_dir`, in a session of its own (see
    kill_host): its worker reaches `main`'s Redis only through spiped — its own client end of
    the Redis tunnel, listening where the worker expects Redis, carried to `main`'s server end
    (`main` runs with role api). Returns once the heartbeats of both its programs, worker and
    train-worker, are in that Redis."""
    env = {
        **os.environ,
        "SCRIPTORIUM_ROLE": "worker",
        "SCRIPTORIUM_DATA_DIR": str(data_dir),
        "SCRIPTORIUM_REDIS__PORT": str(free_port()),  # the tunnel's client end
        "SCRIPTORIUM_REDIS__PASSWORD": main.redis_password(),
        "SCRIPTORIUM_REDIS_TUNNEL__SERVER": main.env["SCRIPTORIUM_REDIS_TUNNEL__LISTEN"],
        "SCRIPTORIUM_REDIS_TUNNEL__KEY_FILE": str(main.data_dir / "secrets" / "redis-tunnel.key"),
        "SCRIPTORIUM_WORKER__NAME": name,
        "SCRIPTORIUM_WORKER__CONCURRENCY": "1",  # as start_stack's
        "SCRIPTORIUM_FETCH__ALLOW": json.dumps(["127.0.0.1"]),
        **settings,
    }
    process = _run_stack(data_dir, env, own_session=True)
    host = WorkerHost(data_dir, env, process, name=name)
    deadline = time.monotonic() + ready_timeout_s
    wanted = {"worker", "train-worker"}
    while not wanted <= {b.get("role") for b in live_workers(main) if b.get("name") == name}:
        if process.poll() is not None:
            raise RuntimeError(f"supervisord exited: {(data_dir / 'stack.out').read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker host {name} not up after {ready_timeout_s}s")
        time.sleep(0.5)
    return host


def _run_stack(data_dir: Path, env: dict[str, str], own_session: bool = False) -> subprocess.Popen:
    """`python -m model stack` (supervisord) with `env`, its output in <data_dir>/stack.out; in a
    session of its own for a host the tests kill whole."""
    require_live("a stack (supervisord)")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "stack.out").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "model", "stack"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
    )


def live_workers(stack: Stack) -> list[dict[str, Any]]:
    """Heartbeats of the live worker processes on the stack's Redis, every host's."""
    from model.tasks import fleet

    return fleet.live(stack.redis())


def launch(
    data_dir: Path,
    settings: dict[str, str],
    ready_timeout_s: float = 180,
    http_port: int | None = None,
) -> Stack:
    """`python -m model stack` in `data_dir` on free ports, with these SCRIPTORIUM_* settings
    (and any others), once /readyz answers."""
    http_port = http_port or free_port()
    env = {
        **os.environ,
        "SCRIPTORIUM_DATA_DIR": str(data_dir),
        "SCRIPTORIUM_REDIS__PORT": str(free_port()),
        "SCRIPTORIUM_HTTP__PORT": str(http_port),
        # Tests and benchmarks serve their images from loopback.
        "SCRIPTORIUM_FETCH__ALLOW": json.dumps(["127.0.0.1"]),
        **settings,
    }
    process = _run_stack(data_dir, env)
    stack = Stack(data_dir, env, process, base_url=f"http://127.0.0.1:{http_port}")
    wait_ready(stack, ready_timeout_s)
    wait_all_pool_children(stack, ready_timeout_s)
    return stack


def start_stack(tmp: Path, **overrides: str) -> Stack:
    """The tests' stack: short cancel grace, no detection cache, the tunnel's server end on."""
    settings = {
        "SCRIPTORIUM_CANCEL__GRACE_S": "5",
        # Long test tasks repeat one page under many URLs: the detection cache would make them
        # short. Stacks that test the cache turn it back on.
        "SCRIPTORIUM_CACHE__TTL_S": "0",
        # The tunnel's server end, on loopback (test_spiped.py plays the front end).
        "SCRIPTORIUM_SPIPED__ENABLED": "true",
        "SCRIPTORIUM_SPIPED__LISTEN": f"[127.0.0.1]:{free_port()}",
        # Two webhook delivery processes are plenty for a test (the default is 4).
        "SCRIPTORIUM_WEBHOOKS__CONCURRENCY": "2",
        # One task at a time: most tests reason about what stays queued behind a running task,
        # and every child loads the models (stack start-up time). test_overlap.py runs several.
        "SCRIPTORIUM_WORKER__CONCURRENCY": "1",
        **overrides,
    }
    return launch(tmp, settings)


def wait_ready(stack: Stack, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise RuntimeError(f"supervisord exited: {(stack.data_dir / 'stack.out').read_text()}")
        try:
            resp = requests.get(stack.base_url + "/readyz", timeout=2)
            if resp.status_code == 200:
                return
            last = resp.text
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"stack not ready after {timeout_s}s: {last}")


def wait_all_pool_children(stack: Stack, timeout_s: float = 180) -> None:
    """/readyz answers once one pool child has its models; tests and benchmarks want every one
    of the `worker.concurrency` children loaded (a child still loading takes CPU and no task),
    and the train-worker up beside them."""
    from model.keyspace import WORKERS_PREFIX
    from model.tasks import fleet

    wanted = stack.settings().worker.concurrency
    deadline = time.monotonic() + timeout_s
    client = stack.redis()
    try:
        while time.monotonic() < deadline:
            loaded = {int(k.rsplit(":", 1)[1]) for k in client.scan_iter(f"{WORKERS_PREFIX}*")}
            trains = any(b.get("role") == "train-worker" for b in fleet.live(client))
            if len(loaded & set(stack.pool_children())) >= wanted and trains:
                return
            time.sleep(0.5)
    finally:
        client.close()
    raise RuntimeError(
        f"fewer than {wanted} worker pool children, or no train-worker, after {timeout_s}s"
    )


class Api:
    """A tiny client for the public API, as a front end would use it."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        if key:
            self.session.headers["X-API-Key"] = key

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.base_url + path, **kwargs)

    def submit(self, body: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
        return (
            self.request("POST", "/task", json=body, **kwargs)
            if body is not None
            else self.request("POST", "/task", **kwargs)
        )

    def submit_ok(self, body: dict[str, Any] | None = None, **kwargs: Any) -> str:
        resp = self.submit(body, **kwargs)
        assert resp.status_code == 202, resp.text
        return resp.json()["task_id"]

    def upload(
        self, images: list[tuple[str, bytes]], params: dict | None = None, **fields: str
    ) -> requests.Response:
        files = [
            ("images", (name, io.BytesIO(data), "application/octet-stream"))
            for name, data in images
        ]
        data = {"type": "detect", **fields}
        if params is not None:
            data["params"] = json.dumps(params)
        return self.request("POST", "/task", data=data, files=files)

    def status(self, task_id: str) -> requests.Response:
        return self.request("GET", f"/status/{task_id}")

    def terminate(self, task_id: str) -> requests.Response:
        return self.request("DELETE", f"/terminate/{task_id}")

    def wait(
        self,
        task_id: str,
        until: set[str] | None = None,
        timeout_s: float = 120,
        predicate: Any = None,
    ) -> dict[str, Any]:
        """Poll until the task reaches one of `until` (default: any terminal state)."""
        until = until or TERMINAL
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.status(task_id).json()
            if body.get("state") in until and (predicate is None or predicate(body)):
                return body
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} did not reach {until}: {body}")

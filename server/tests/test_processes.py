"""Process boundaries: the HTTP side never loads torch; probes; supervisord runs everything."""

from __future__ import annotations

import subprocess

import pytest
import requests

from testkit.stack import Stack

pytestmark = pytest.mark.live


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as fh:
        return fh.read()


def test_gunicorn_workers_have_no_torch_loaded(stack: Stack) -> None:
    master = stack.program_pid("gunicorn")
    workers = _children(master)
    assert workers, "gunicorn has no worker processes"
    requests.get(
        stack.base_url + "/models", timeout=10, headers={"X-API-Key": stack.keys["alice"]}
    ).raise_for_status()
    for pid in [master, *workers]:
        assert "libtorch" not in _maps(pid), f"gunicorn process {pid} mapped libtorch"
    worker_child = _children(stack.program_pid("worker"))[0]
    assert "libtorch" in _maps(worker_child)  # the check above can fail: torch shows up here


def test_all_programs_running_under_supervisord(stack: Stack) -> None:
    status = stack.ctl("status")
    for program in ("redis", "worker", "gunicorn"):
        assert f"{program}" in status
    assert status.count("RUNNING") >= 3, status


def test_probes(stack: Stack) -> None:
    assert requests.get(stack.base_url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(stack.base_url + "/readyz", timeout=5).json()
    assert ready["status"] == "ready"
    assert any("illustrations-demo" in w["models"] for w in ready["workers"])

"""The spiped tunnel end to end: a front-end spiped (-e) on loopback with the stack's key carries
the whole task flow through the stack's spiped (-d) -> nginx -> gunicorn; a wrong key gets
nothing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.stack import Api, Stack, free_port

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not shutil.which("spiped"), reason="spiped is not installed"),
]


def _front_end_spiped(stack: Stack, key: Path) -> Iterator[str]:
    """What config/spiped/spiped-scriptorium.service runs on the front end, on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "spiped",
            "-e",
            "-F",
            "-s",
            f"[127.0.0.1]:{port}",
            "-t",
            stack.env["SCRIPTORIUM_SPIPED__LISTEN"],
            "-k",
            str(key),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:  # listening yet? (a TCP connect only: with a wrong key nothing more ever works)
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()  # SIGTERM would wait for the clients' keep-alive connections to close
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tunnel(stack: Stack) -> Iterator[str]:
    yield from _front_end_spiped(stack, stack.data_dir / "secrets" / "spiped.key")


@pytest.fixture(scope="module")
def wrong_tunnel(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    key = tmp_path_factory.mktemp("wrongkey") / "spiped.key"
    key.write_bytes(os.urandom(32))
    yield from _front_end_spiped(stack, key)


def test_server_end_runs_under_supervisord_with_a_private_key(stack: Stack) -> None:
    status = stack.ctl("status", "spiped")
    assert "RUNNING" in status, status
    key = stack.data_dir / "secrets" / "spiped.key"
    assert key.stat().st_size == 32
    assert key.stat().st_mode & 0o777 == 0o600


def test_task_flow_through_the_tunnel(
    stack: Stack, tunnel: str, image_server: ImageServer, pages
) -> None:
    api = Api(tunnel, stack.keys["alice"])
    assert requests.get(tunnel + "/readyz", timeout=10).json()["status"] == "ready"

    task_id = api.upload([("tunnel.jpg", jpeg_bytes(pages[1]))]).json()["task_id"]
    done = api.wait(task_id)
    assert done["state"] == "SUCCEEDED", done
    assert len(done["result"]["items"]) == 1

    url = image_server.add("tunnel-long.jpg", jpeg_bytes(pages[0]))
    urls = [f"{url}?page={i}" for i in range(150)]
    long_id = api.submit_ok({"type": "detect", "input": {"image_urls": urls}})
    api.wait(long_id, {"RUNNING"}, predicate=lambda body: body["progress"]["done"] >= 1)
    assert api.terminate(long_id).status_code == 202
    assert api.wait(long_id, timeout_s=30)["state"] == "CANCELLED"


def test_a_wrong_key_gets_nothing_through(stack: Stack, wrong_tunnel: str) -> None:
    for path in ("/healthz", "/readyz"):
        with pytest.raises(requests.ConnectionError):
            requests.get(wrong_tunnel + path, timeout=10)

"""A bare redis-server of a test's own (no persistence, loopback): for the fast layer and for
tests of the CLI, with no stack around it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from testkit.stack import free_port


@contextmanager
def redis_server(
    folder: Path, password: str | None = None, port: int | None = None
) -> Iterator[int]:
    """Start redis-server in `folder` (on `port`, else a free one), yield its port once it
    answers, stop it after."""
    port = port or free_port()
    auth = ["--requirepass", password] if password else []
    persistence = ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", *auth, *persistence],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password=password)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)

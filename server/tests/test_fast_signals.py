"""The children tests start hear Ctrl-C, however pytest itself was started (testkit/signals.py).

Run on its own by test_release_script.py with SIGINT ignored, as a background job is started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testkit.signals import with_sigint_ignored


def test_children_start_with_sigint_at_its_default() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=10) == -signal.SIGINT
    except subprocess.TimeoutExpired:
        pytest.fail("a child of the suite ignores SIGINT")
    finally:
        child.kill()
        child.wait()


def test_this_process_handles_sigint() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Running(BaseHTTPRequestHandler):
    """A server whose one task runs for ever (the client's `wait` polls it)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(
            {"task_id": TASK, "state": "RUNNING", "progress": {"done": 1, "total": 9, "failed": 0}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


TASK = "0" * 32


def test_the_client_asks_on_ctrl_c_in_a_terminal_though_started_with_sigint_ignored() -> None:
    """A person at the terminal presses Ctrl-C: the client asks, whatever its parent ignored
    (Python keeps an ignored SIGINT ignored, and the question never came)."""
    from server.tests.test_client import Terminal  # a pseudo-terminal, typed into

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Running)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIPTORIUM_")}
    env.update(
        SCRIPTORIUM_URL=f"http://127.0.0.1:{server.server_address[1]}",
        SCRIPTORIUM_KEY="k",
        TERM="xterm-256color",
    )
    argv = [sys.executable, "-m", "model", "client", "wait", TASK]
    term = Terminal(with_sigint_ignored(argv), env)
    try:
        term.expect(r"RUNNING")
        term.type(b"\x03")
        term.expect(re.escape(f"cancel task {TASK}? [y/N]"), timeout=10)
        term.type(b"n\r")
        term.expect("still waiting")
    finally:
        term.kill()
        server.shutdown()
        server.server_close()

"""The children tests start hear Ctrl-C, however pytest itself was started (testkit/signals.py).

Run on its own by test_release_script.py with SIGINT ignored, as a background job is started."""

from __future__ import annotations

import signal
import subprocess

import pytest


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

"""Signal handling the tests' children can rely on, whatever pytest inherited.

A runner that starts pytest as a background job (`cmd &` in a script, `nohup`, some CI agents)
hands it SIGINT ignored, and an ignored signal stays ignored across fork and exec: the client
would never see its KeyboardInterrupt and bash could not trap INT, so the Ctrl-C tests would test
the runner, not the code. A *handled* signal is reset to its default at exec, so pytest handling
SIGINT itself (as Python does when it starts with SIGINT at its default) gives every child the
default again: subprocess, pty.fork and the stack's supervisord alike.
"""

from __future__ import annotations

import signal
import sys

IGNORE_SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def hear_interrupts() -> bool:
    """Handle SIGINT with Python's KeyboardInterrupt if it was ignored; True if it was."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def with_sigint_ignored(argv: list[str]) -> list[str]:
    """`argv` started the way a background job of a script is: with SIGINT ignored."""
    return [sys.executable, "-c", IGNORE_SIGINT_THEN_EXEC, *argv]

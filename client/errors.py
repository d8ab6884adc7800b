"""Exit codes of the client and the error that carries one to `main`."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """What the process exits with; scripts can rely on these (documented in --help, README)."""

    OK = 0  # the command did what it was asked; a waited-for task SUCCEEDED
    FAILED = 1  # the task FAILED (or has no result because it failed)
    USAGE = 2  # bad arguments, or the server refused the request as invalid (400/409/413/415/422)
    TIMED_OUT = 3  # the task TIMED_OUT (its time limit on the server)
    CANCELLED = 4  # the task was CANCELLED
    AUTH = 5  # no key, a wrong or revoked key (401/403)
    NOT_FOUND = 6  # no such task for this key (404), or it expired (410)
    UNAVAILABLE = 7  # server unreachable or failing (connection errors, 5xx, 429) after retries
    ACTIVE = 8  # status/result: the task is still QUEUED or RUNNING
    INTERRUPTED = 130  # Ctrl-C (the task, if any, keeps running)


STATE_EXIT = {
    "SUCCEEDED": Exit.OK,
    "FAILED": Exit.FAILED,
    "TIMED_OUT": Exit.TIMED_OUT,
    "CANCELLED": Exit.CANCELLED,
    "QUEUED": Exit.ACTIVE,
    "RUNNING": Exit.ACTIVE,
}
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"})

EXIT_HELP = """\
exit codes:
  0    success; a waited-for task SUCCEEDED
  1    the task FAILED
  2    usage error, or the server refused the request as invalid (400/409/413/415/422)
  3    the task TIMED_OUT
  4    the task was CANCELLED
  5    authentication: no key, or a wrong or revoked one (401/403)
  6    no such task for this key (404), or its result expired (410)
  7    server unavailable: connection errors, 5xx or 429 after the retries
  8    (status, result) the task is still QUEUED or RUNNING
  130  interrupted (Ctrl-C); the task keeps running unless you chose to cancel it
"""


class ClientError(Exception):
    """A failure with the exit code it means; `code`/`status` come from the server if it said."""

    def __init__(
        self,
        exit_code: Exit,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.status = status
        self.code = code

    def as_json(self) -> dict:
        return {
            "error": {
                "exit_code": int(self.exit_code),
                "http_status": self.status,
                "code": self.code,
                "message": self.message,
            }
        }

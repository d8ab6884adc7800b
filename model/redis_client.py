"""Redis clients for the worker that ride out a short outage of Redis (a restart under
supervisord, a tunnel that reconnects) instead of failing the task in hand at its next write.

redis-py's clients made by `from_url` do not retry at all: a command sent while Redis restarts
fails at once. A worker's calls retry with a capped exponential backoff until
`redis.outage_patience_s` has passed since the call began; an outage longer than that reaches
the runner, which leaves the task to be requeued once Redis is back (model/lifecycle/runner.py),
never ends it as failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

# Errors that say Redis could not be reached, not that a command was wrong. (A refused password
# is a ConnectionError to redis-py too; it is no outage: see `unreachable`.)
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
CONNECT_TIMEOUT_S = 2.0  # one try to connect; the patience bounds the tries
# One reply: a command or script answers well within this; a half-open connection fails here.
COMMAND_TIMEOUT_S = 5.0
# One read of the binary client's: uploads and model blobs, megabytes a reply (a timeout bounds
# each read, not the whole transfer).
BULK_TIMEOUT_S = 30.0
# Processes that work through a Redis outage (a restart, a tunnel reconnecting) instead of
# failing what they hold: the workers. The HTTP side answers at once (a 503), never waits.
PATIENT_ROLES = frozenset({"worker", "webhooks"})

T = TypeVar("T")


def unreachable(error: BaseException) -> bool:
    return isinstance(error, UNREACHABLE) and not isinstance(error, AuthenticationError)


class PatientRetry(Retry):
    """Retries (0.05 s apart, doubling, at most 1 s) until `patience_s` after the call began.

    A deadline rather than a count: redis-py retries a connect inside a command's retry, so
    counts multiply; nested calls on one connection share the outer call's deadline. Each
    connection gets its own copy (redis-py deep-copies it), used by one thread at a time."""

    def __init__(self, patience_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=MAX_BACKOFF_S, base=FIRST_BACKOFF_S), retries=-1)
        self.patience_s = patience_s
        self._deadline: float | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> PatientRetry:
        return PatientRetry(self.patience_s)

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        outermost = self._deadline is None
        if outermost:
            self._deadline = time.monotonic() + self.patience_s
        try:
            return self._until_deadline(do, fail, is_retryable, with_failure_count)
        finally:
            if outermost:
                self._deadline = None

    def _until_deadline(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None,
        with_failure_count: bool,
    ) -> T:
        assert self._deadline is not None
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if isinstance(error, AuthenticationError) or (
                    is_retryable and not is_retryable(error)
                ):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                pause = self._backoff.compute(failures)
                if time.monotonic() + pause > self._deadline:
                    raise
                time.sleep(pause)


def patient_options(patience_s: float) -> dict[str, Any]:
    """Options of a redis-py client whose commands retry through an outage of `patience_s`."""
    return {"retry": PatientRetry(patience_s), "socket_connect_timeout": CONNECT_TIMEOUT_S}


def patient_redis(url: str, patience_s: float, **options: Any) -> Redis:
    return Redis.from_url(url, **patient_options(patience_s), **options)


def client_options(patience_s: float, role: str, binary: bool = False) -> dict[str, Any]:
    """The one timeout policy of the service's clients (model/services.py builds them): every
    client bounds its connect and each reply; a worker's also retries through an outage."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": BULK_TIMEOUT_S if binary else COMMAND_TIMEOUT_S,
    }
    if role in PATIENT_ROLES:
        options.update(patient_options(patience_s))
    return options

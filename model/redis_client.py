"""Redis clients for the worker that ride out a short outage of Redis (a restart under
supervisord, a tunnel that reconnects) instead of failing the task in hand at its next write.

redis-py's clients made by `from_url` do not retry at all: a command sent while Redis restarts
fails at once. A worker's calls retry with a capped exponential backoff for about
`redis.outage_patience_s`; an outage longer than that reaches the runner, which leaves the task
to be requeued once Redis is back (model/runner.py), never ends it as failed.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

# Errors that say Redis could not be reached, not that a command was wrong.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


def patient_retry(patience_s: float) -> Retry:
    """Retries whose backoffs (0.05 s, doubling, at most 1 s apart) add up to `patience_s`."""
    backoff = ExponentialBackoff(cap=MAX_BACKOFF_S, base=FIRST_BACKOFF_S)
    retries, waited = 0, 0.0
    while waited < patience_s:
        waited += backoff.compute(retries)
        retries += 1
    return Retry(backoff, retries)


def patient_redis(url: str, patience_s: float, **options: Any) -> Redis:
    """A client of `url` whose commands retry through an outage of about `patience_s`."""
    return Redis.from_url(url, retry=patient_retry(patience_s), **options)

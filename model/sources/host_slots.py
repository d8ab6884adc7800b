"""Places for requests to one host, shared by every process that uses the same Redis.

`fetch.per_host_concurrency` is what one library's server sees from the whole service, not
from each of a worker's `worker.concurrency` pool processes (4 tasks reading one library would
otherwise hold 4 × 4 requests to it), nor from each worker host that joins over the tunnel.
Each process's own adaptive limit (`throttle.HostLimiter`) still decides how many of those
places it asks for; these slots only cap the sum. What one process's limiter learnt about a
host is kept here too, so that a process meeting the host later starts where it got to instead
of probing from one request again.

A slot is a member of a sorted set per host, scored by when its lease ends: a process killed
mid-request cannot keep its places, they lapse after `lease_s` (longer than any one request is
allowed to take). Taking and giving back are single Lua steps on Redis's clock.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from model.sources.throttle import IDLE_RESET_S

KEY_PREFIX = "sc:fetch:slots:"
LEARNED_PREFIX = "sc:fetch:limit:"  # the limit the processes' limiters reached with a host
POLL_S = 0.02  # how often a request waiting for a place looks again (and at its cancel flag)

# KEYS: the host's slots; ARGV: token, capacity, lease in ms. 1: taken, 0: the host is full.
_TAKE = """
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class HostSlots:
    def __init__(self, redis: Redis, capacity: int, lease_s: float) -> None:
        self.redis = redis
        self.capacity = max(1, capacity)
        self.lease_ms = max(1000, int(lease_s * 1000))
        self._take = redis.register_script(_TAKE)

    def take(self, host: str, cancelled: Callable[[], bool]) -> str | None:
        """Wait for a place at `host`; its token, or None once `cancelled()`. A Redis that
        cannot be reached lets the request go (the process's own limit still holds): the task
        is then failing anyway, and a fetch must not wait forever on it."""
        token = uuid.uuid4().hex
        while not cancelled():
            try:
                if self._take(keys=[KEY_PREFIX + host], args=[token, self.capacity, self.lease_ms]):
                    return token
            except RedisError:
                return ""
            time.sleep(POLL_S)
        return None

    def learned(self, host: str) -> int | None:
        """The limit a process's limiter last reached with `host` (within IDLE_RESET_S)."""
        try:
            value = self.redis.get(LEARNED_PREFIX + host)
        except RedisError:
            return None
        return int(value) if value else None

    def learn(self, host: str, limit: int) -> None:
        with contextlib.suppress(RedisError):
            self.redis.set(LEARNED_PREFIX + host, limit, ex=int(IDLE_RESET_S))

    def give_back(self, host: str, token: str) -> None:
        if not token:
            return
        with contextlib.suppress(RedisError):  # else the lease lapses instead
            self.redis.zrem(KEY_PREFIX + host, token)

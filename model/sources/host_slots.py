"""Places for requests to one host, shared by every process that uses the same Redis.

`fetch.per_host_concurrency` is what one library's server sees from the whole service, not
from each of a worker's `worker.concurrency` pool processes (4 tasks reading one library would
otherwise hold 4 × 4 requests to it), nor from each worker host that joins over the tunnel.
Each process's own adaptive limit (`throttle.HostLimiter`) still decides how many of those
places it asks for; these slots only cap the sum. What one process's limiter learnt about a
host is kept here too, so that a process meeting the host later starts where it got to instead
of probing from one request again.

Per host, in Redis: the places taken (a sorted set of tokens scored by when their lease ends:
short, `LEASE_S`, and renewed every `lease_s / 4` by a thread of the process holding them, so a
process killed mid-request, or a whole worker, keeps them only that long; a request may take
longer than the lease) and the requests waiting for one (scored by arrival, with the time each was
last seen asking: a waiter that stopped asking — cancelled, or its process died — is dropped).
Places go to waiters first come, first served, whichever process they are in: a process that
has just given a place back cannot take it again ahead of a request another process has had
waiting. Every step is one Lua script on Redis's clock.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from model.keyspace import FETCH_LIMIT_PREFIX, FETCH_SLOTS_PREFIX
from model.sources.throttle import IDLE_RESET_S

POLL_S = 0.02  # how often a request waiting for a place asks again (and looks at its cancel flag)
WAITER_GONE_MS = 1000  # a waiter that has not asked for this long is dropped from the line
REDIS_TIMEOUT_S = 5.0  # a Redis that hangs must not hold a download thread for longer
# How long a place outlives its holder: renewed 4 times a lease, so a holder must be stalled for
# 3/4 of it (or Redis away that long) before its places can go to others too soon.
LEASE_S = 10.0

# KEYS: places taken, waiters (token -> arrival), waiters last seen (token -> time); ARGV:
# token, capacity, lease in ms, waiter timeout in ms. 1: taken, 0: wait and ask again.
_TAKE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lease = tonumber(ARGV[3])
-- Never shortens a key's life (worker hosts may run with other leases).
local function keep(key)
  if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
end
local function out_of_line(waiter)
  redis.call('ZREM', KEYS[2], waiter)
  redis.call('HDEL', KEYS[3], waiter)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], now)
keep(KEYS[2])
keep(KEYS[3])
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then return 0 end
-- The first `free` waiters that are still asking may take a place; the others wait.
local ahead = 0
for _, waiter in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if waiter == ARGV[1] then
    out_of_line(waiter)
    redis.call('ZADD', KEYS[1], now + lease, waiter)
    keep(KEYS[1])
    return 1
  end
  local seen = tonumber(redis.call('HGET', KEYS[3], waiter) or '0')
  if now - seen > tonumber(ARGV[4]) then
    out_of_line(waiter)
  else
    ahead = ahead + 1
    if ahead >= free then return 0 end
  end
end
return 0
"""

# KEYS: as _TAKE; ARGV: lease in ms, then the tokens this process still holds at the host.
_RENEW = """
local t = redis.call('TIME')
local lease_end = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', lease_end, ARGV[i]) end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: as _TAKE; ARGV: token. Out of the line, or its place given back.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


def _keys(host: str) -> list[str]:
    base = FETCH_SLOTS_PREFIX + host
    return [base, base + ":waiting", base + ":seen"]


def _with_timeouts(redis: Redis) -> Redis:
    """A client of the same server whose calls give up after REDIS_TIMEOUT_S, without retrying."""
    kwargs = dict(redis.connection_pool.connection_kwargs)
    kwargs.update(socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
    kwargs.pop("retry", None)  # no waiting out an outage here: the local limit holds meanwhile
    pool = redis.connection_pool.__class__(
        connection_class=redis.connection_pool.connection_class, **kwargs
    )
    return Redis(connection_pool=pool)


class HostSlots:
    def __init__(self, redis: Redis, capacity: int, lease_s: float = LEASE_S) -> None:
        self.redis = _with_timeouts(redis)
        self.capacity = max(1, capacity)
        self.lease_ms = max(1000, int(lease_s * 1000))
        self._take = self.redis.register_script(_TAKE)
        self._leave = self.redis.register_script(_LEAVE)
        self._renew = self.redis.register_script(_RENEW)
        # The places this process holds (token -> host), whose leases its renewer extends.
        self._held: dict[str, str] = {}
        self._held_lock = threading.Lock()
        self._renewer_pid = 0  # the process whose renewer runs (a forked child starts its own)
        # Places given back while Redis was away: they stay taken there (Redis keeps them
        # across a restart) until given back for real, which the next take does first.
        self._owed: list[tuple[str, str]] = []
        self._owed_lock = threading.Lock()

    def take(self, host: str, cancelled: Callable[[], bool]) -> str | None:
        """Wait for a place at `host`, in line with every other process's requests; its
        token, or None once `cancelled()`. A Redis that cannot be reached lets the request go
        (the process's own limit still holds): the task is failing anyway then, and a fetch
        must not wait on it."""
        token = uuid.uuid4().hex
        keys = _keys(host)
        args = [token, self.capacity, self.lease_ms, WAITER_GONE_MS]
        self._settle_owed()
        self._start_renewer()
        while not cancelled():
            try:
                if self._take(keys=keys, args=args, client=self.redis):
                    with self._held_lock:
                        self._held[token] = host
                    return token
            except RedisError:
                self.give_back(host, token)  # in case the step ran and only its reply was lost
                return ""
            time.sleep(POLL_S)
        self.give_back(host, token)  # out of the line
        return None

    def give_back(self, host: str, token: str) -> None:
        if not token:
            return
        with self._held_lock:
            self._held.pop(token, None)
        try:
            self._leave(keys=_keys(host), args=[token], client=self.redis)
        except RedisError:  # owed: else the place would stay taken until its lease lapses
            with self._owed_lock:
                self._owed.append((host, token))

    def _start_renewer(self) -> None:
        with self._held_lock:
            if self._renewer_pid == os.getpid():
                return
            self._renewer_pid = os.getpid()
            self._held.clear()  # a forked child holds none of its parent's places
        threading.Thread(target=self._renew_forever, name="host-slots-renew", daemon=True).start()

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self.lease_ms / 4000)
            self.renew()

    def renew(self) -> None:
        """Extend the lease of every place this process holds (a place given back meanwhile is
        not taken again: ZADD XX)."""
        by_host: dict[str, list[str]] = {}
        with self._held_lock:
            for token, host in self._held.items():
                by_host.setdefault(host, []).append(token)
        for host, tokens in by_host.items():
            with contextlib.suppress(RedisError):  # the next round tries again
                self._renew(keys=_keys(host)[:1], args=[self.lease_ms, *tokens], client=self.redis)

    def _settle_owed(self) -> None:
        """Give back for real the places given back while Redis was away (a restart keeps
        them: every place of the host could stay taken for a whole lease)."""
        with self._owed_lock:
            owed, self._owed = self._owed, []
        for index, (host, token) in enumerate(owed):
            try:
                self._leave(keys=_keys(host), args=[token], client=self.redis)
            except RedisError:
                with self._owed_lock:
                    self._owed.extend(owed[index:])
                return

    def learned(self, host: str) -> int | None:
        """The limit a process's limiter last reached with `host` (within IDLE_RESET_S)."""
        try:
            value = self.redis.get(FETCH_LIMIT_PREFIX + host)
        except RedisError:
            return None
        return int(value) if value else None

    def learn(self, host: str, limit: int) -> None:
        with contextlib.suppress(RedisError):
            self.redis.set(FETCH_LIMIT_PREFIX + host, limit, ex=int(IDLE_RESET_S))

"""The per-host limit across processes (model/sources/host_slots.py), on a bare Redis: fetchers
that stand for the worker's pool processes, against a local server that counts what it gets."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from model.keyspace import FETCH_SLOTS_PREFIX
from model.sources.fetch import SafeFetcher
from model.sources.host_slots import HostSlots
from server.tests.test_adaptive_fetch import LOOPBACK, fetch_all, flat, serving, wait_for
from testkit.stack import free_port


@contextlib.contextmanager
def processes(redis_client: redis.Redis, count: int, **options: int) -> Iterator[list[SafeFetcher]]:
    """`count` fetchers sharing the host places in `redis_client`: the worker's pool processes."""
    fetchers = [SafeFetcher(allow=LOOPBACK, **options) for _ in range(count)]  # type: ignore[arg-type]
    for fetcher in fetchers:
        fetcher.share_host_slots(redis_client)
    try:
        yield fetchers
    finally:
        for fetcher in fetchers:
            fetcher.session.close()


def side_by_side(fetchers: list[SafeFetcher], urls: list[str], threads: int) -> list[list]:
    """Every fetcher fetches all of `urls` with `threads` download threads, all at once: the
    pool processes' tasks reading one host side by side."""
    with ThreadPoolExecutor(len(fetchers)) as pool:
        return list(pool.map(lambda f: fetch_all(f, urls, threads), fetchers))


def test_processes_together_keep_to_the_per_host_limit(clean_redis: redis.Redis) -> None:
    # Four "pool processes", each free to send 4 at once: 16 without the shared slots.
    with (
        processes(clean_redis, 4, per_host_concurrency=4, per_host_start=4) as fetchers,
        serving(flat(0.15)) as server,
    ):
        results = side_by_side(fetchers, [f"{server.url}/p{i}" for i in range(12)], 6)
    assert all(not isinstance(r, str) for batch in results for r in batch), results
    assert len(server.hits) == 48
    assert server.max_in_flight == 4, server.max_in_flight
    assert clean_redis.zcard(FETCH_SLOTS_PREFIX + f"127.0.0.1:{server.url.rsplit(':', 1)[1]}") == 0


HOLDER = """
import sys, time, redis
from model.sources.host_slots import HostSlots
slots = HostSlots(redis.Redis(port=int(sys.argv[1])), capacity=1, lease_s=1)
print(slots.take("h:1", lambda: False), flush=True)
time.sleep(600)
"""


def test_places_live_as_long_as_their_process_and_a_cancel_ends_the_wait(
    clean_redis: redis.Redis,
) -> None:
    """A place's lease is short and renewed by the process holding it: a live holder keeps it
    however long its request takes; a killed one (a whole worker: nobody gives it back) loses
    it one lease later, not after the longest a request may take (130 s before)."""
    port = clean_redis.connection_pool.connection_kwargs["port"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip()  # its place, taken
        slots = HostSlots(clean_redis, capacity=1, lease_s=1)
        cancelled = threading.Event()
        started = time.monotonic()
        threading.Timer(3, cancelled.set).start()
        assert slots.take("h:1", cancelled.is_set) is None  # three leases on: still its place
        assert time.monotonic() - started < 3.5  # and the cancel ended the wait
    finally:
        holder.kill()
        holder.wait()
    killed_at = time.monotonic()
    token = slots.take("h:1", lambda: time.monotonic() - killed_at > 10)
    assert token, "the dead holder's lease did not lapse"
    slots.give_back("h:1", token)
    assert clean_redis.zcard(FETCH_SLOTS_PREFIX + "h:1") == 0


def test_an_unreachable_redis_does_not_hold_fetches() -> None:
    # Nothing listens there; no retries, so the test does not wait out redis-py's backoff.
    gone = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    slots = HostSlots(gone, capacity=1, lease_s=1)
    assert slots.take("h:1", lambda: False) == ""  # let through: the process's own limit holds
    slots.give_back("h:1", "")


def test_a_place_given_back_while_redis_was_away_is_given_back_once_it_is_here(
    clean_redis: redis.Redis,
) -> None:
    """Redis keeps the places taken across a restart; one whose give-back failed would stay
    taken for a whole lease (130 s by default: a running task stalled past its time limit).
    The process gives it back at its next take."""
    slots, other = HostSlots(clean_redis, 1, 60), HostSlots(clean_redis, 1, 60)
    token = slots.take("h:1", lambda: False)
    here = slots.redis
    slots.redis = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # Redis away
    slots.give_back("h:1", token)  # fails quietly: owed
    slots.redis = here  # Redis back, with the place still taken
    started = time.monotonic()
    assert other.take("h:1", lambda: time.monotonic() - started > 0.3) is None
    again = slots.take("h:1", lambda: time.monotonic() - started > 3)  # settles its debt first
    assert again and again != token
    assert clean_redis.zrange(FETCH_SLOTS_PREFIX + "h:1", 0, -1) == [again]


def test_waiting_for_a_shared_place_is_not_taken_for_latency(clean_redis: redis.Redis) -> None:
    # Two processes, one place: each waits for the other's request, yet neither limiter may
    # read that wait as the host slowing down (it would shrink for no reason).
    with (
        processes(clean_redis, 2, per_host_concurrency=1, per_host_start=1) as fetchers,
        serving(flat(0.1)) as server,
    ):
        side_by_side(fetchers, [f"{server.url}/p{i}" for i in range(6)], 1)
        wait_for(lambda: len(server.hits) == 12)
        limiters = [f.host_limiter(server.url) for f in fetchers]
    ewmas = [lim._latency[False].ewma for lim in limiters]
    assert all(e is not None and e < 0.18 for e in ewmas), ewmas


def test_a_new_process_starts_where_the_others_got_to(clean_redis: redis.Redis) -> None:
    with (
        processes(clean_redis, 2, per_host_concurrency=4, per_host_start=1) as (first, later),
        serving(flat(0.05)) as server,
    ):
        fetch_all(first, [f"{server.url}/a{i}" for i in range(24)], 6)
        assert first.host_limiter(server.url).limit == 4  # probed up from one request
        arrived = len(server.hits)
        fetch_all(later, [f"{server.url}/b{i}" for i in range(8)], 6)
        profile = [hit.in_flight for hit in server.hits[arrived:]]
    assert later.host_limiter(server.url).limit == 4
    assert profile[:4] == [1, 2, 3, 4], f"the later process probed the host again: {profile}"


def test_places_go_first_come_first_served_across_processes(clean_redis: redis.Redis) -> None:
    # A long task's process gives a place back and at once wants it again: another process's
    # request, waiting already, must get it first (it was starved before the line existed).
    with (
        processes(clean_redis, 2, per_host_concurrency=2, per_host_start=2) as tasks,
        serving(flat(0.1)) as server,
    ):
        long_task, short_task = tasks
        long_run = threading.Thread(
            target=fetch_all, args=(long_task, [f"{server.url}/long{i}" for i in range(60)], 4)
        )
        long_run.start()
        wait_for(lambda: len(server.hits) >= 4)
        started = time.monotonic()
        fetch_all(short_task, [f"{server.url}/short{i}" for i in range(4)], 2)
        short_s = time.monotonic() - started
        long_left = 60 - sum(hit.path.startswith("/long") for hit in server.hits)
        long_run.join()
    # Its 4 requests share the 2 places with the long task's: ~0.4 s, not the long task's ~3 s.
    assert short_s < 1.5, short_s
    assert long_left > 10, "the long task was over before the short one got its places"


def test_a_waiter_that_stopped_asking_leaves_the_line(clean_redis: redis.Redis) -> None:
    slots = HostSlots(clean_redis, capacity=1, lease_s=30)
    held = slots.take("h:1", lambda: False)
    assert held
    # A request of a process that died while it waited: in line, last seen asking now.
    clean_redis.zadd(FETCH_SLOTS_PREFIX + "h:1:waiting", {"dead-waiter": 0})
    clean_redis.hset(FETCH_SLOTS_PREFIX + "h:1:seen", "dead-waiter", int(time.time() * 1000))
    slots.give_back("h:1", held)
    started = time.monotonic()
    token = slots.take("h:1", lambda: time.monotonic() - started > 5)
    assert token, "the dead waiter kept its turn"
    assert 0.5 < time.monotonic() - started < 2.5  # once it had not asked for a second

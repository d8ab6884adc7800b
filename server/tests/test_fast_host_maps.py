"""What a worker process keeps per host is bounded: pool processes live for many tasks, and a
task may name thousands of distinct host spellings (each one a per-host limiter and a metrics
label, 2.2 KB a host before: 30 MB for 20,000)."""

from __future__ import annotations

import redis

from model.metrics.record import HOST_CACHE_MIN, Meter
from model.sources.fetch import MAX_HOST_LIMITERS, SafeFetcher

HOSTS = 20_000
LABELLED_HOSTS = 2 * HOST_CACHE_MIN  # each new one costs a Redis round trip: fewer, twice the bound


def test_host_limiters_are_bounded_and_busy_ones_kept() -> None:
    fetcher = SafeFetcher()
    busy = fetcher.host_limiter("http://busy.example/page.jpg")
    permit = busy.acquire(lambda: False)  # a request in flight at that host
    assert permit is not None
    for i in range(HOSTS):
        fetcher.host_limiter(f"http://h{i}.example/page.jpg")
        fetcher.host_limiter("http://recent.example/page.jpg")  # used all along
    print(f"{HOSTS} hosts: {len(fetcher._limiters)} limiters kept")
    assert len(fetcher._limiters) <= MAX_HOST_LIMITERS + 1
    assert fetcher.host_limiter("http://busy.example/page.jpg") is busy  # its count holds
    busy.release(permit)
    assert "recent.example:" in fetcher._limiters
    fetcher.session.close()


def test_host_labels_remembered_are_bounded(clean_redis: redis.Redis) -> None:
    meter = Meter(clean_redis, max_hosts=50)
    for i in range(LABELLED_HOSTS):
        meter.host_label(f"http://h{i}.example/page.jpg")
    print(f"{LABELLED_HOSTS} hosts: {len(meter._hosts)} labels remembered")
    assert len(meter._hosts) <= HOST_CACHE_MIN
    assert meter.host_label("http://h0.example/x") == "h0.example"  # admitted first, still
    assert clean_redis.scard("sc:metrics:hosts") <= 50

"""Fetching like a good crawler (no stack: local HTTP/1.1 servers in threads).

- keep-alive: sequential requests to a host share one TCP connection, error answers included;
  parallel ones never open more connections than requests were in flight;
- adaptive per-host concurrency: 429 + Retry-After halves it and keeps the host free of new
  requests until Retry-After has passed; a host with flat latency is given more requests at
  once up to the maximum (also when its documents come back far sooner than its images); a
  host whose latency climbs with concurrency is not;
- a cancel still wakes requests waiting for a place or for a host's Retry-After;
- the limiter alone: 429s to requests sent before a cut cut it only once; a host that got
  slower for good is given more requests again once its latency is flat; an idle host starts
  over.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from model.settings import FetchSettings
from model.sources import throttle
from model.sources.fetch import FetchError, FetchResult, FetchScope, SafeFetcher, _retry_after
from model.sources.throttle import HostLimiter
from server.tests.test_fetch_hardening import in_thread

LOOPBACK = ["127.0.0.1"]
BODY = b"x" * 1000

# What a server answers to the `n`th request (from 0) for a path: status, headers, delay.
Answer = Callable[[str, int], tuple[int, dict[str, str], float]]


@dataclass
class Hit:
    """One request as the server saw it."""

    path: str
    port: int  # the client's port: one per TCP connection
    arrived: float
    in_flight: int  # requests being served when it arrived, itself included
    replied: float = float("inf")  # when its answer started going out
    done: float = float("inf")


class RecordingServer:
    """HTTP/1.1 with keep-alive on 127.0.0.1, recording every request. `serial`: one request
    served at a time (a server at capacity: the more requests at once, the longer each waits)."""

    def __init__(self, answer: Answer, serial: bool = False) -> None:
        self.hits: list[Hit] = []
        self._answer = answer
        self._serial = threading.Lock() if serial else contextlib.nullcontext()
        self._lock = threading.Lock()
        self._asked: dict[str, int] = {}
        self._in_flight = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_GET(self) -> None:
                hit, n = server._arrive(self.path, self.client_address[1])
                status, headers, delay_s = server._answer(self.path, n)
                with server._serial:
                    time.sleep(delay_s)
                body = BODY if status == 200 else b"no"
                hit.replied = time.monotonic()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                server._leave(hit)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def _arrive(self, path: str, port: int) -> tuple[Hit, int]:
        with self._lock:
            n = self._asked.get(path, 0)
            self._asked[path] = n + 1
            self._in_flight += 1
            hit = Hit(path, port, time.monotonic(), self._in_flight)
            self.hits.append(hit)
            return hit, n

    def _leave(self, hit: Hit) -> None:
        with self._lock:
            self._in_flight -= 1
            hit.done = time.monotonic()

    @property
    def ports(self) -> set[int]:
        return {hit.port for hit in self.hits}

    @property
    def max_in_flight(self) -> int:
        return max(hit.in_flight for hit in self.hits)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def serving(answer: Answer, serial: bool = False) -> Iterator[RecordingServer]:
    server = RecordingServer(answer, serial)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def fetcher_for(**options: object) -> Iterator[SafeFetcher]:
    fetcher = SafeFetcher(allow=LOOPBACK, **options)  # type: ignore[arg-type]
    try:
        yield fetcher
    finally:
        fetcher.session.close()


def fetch_all(fetcher: SafeFetcher, urls: list[str], threads: int) -> list[FetchResult | str]:
    """Fetch `urls` from `threads` download threads sharing the fetcher; errors as their code."""

    def one(url: str) -> FetchResult | str:
        try:
            return fetcher.get(url)
        except FetchError as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, urls))


def wait_for(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def flat(delay_s: float) -> Answer:
    return lambda path, n: (200, {}, delay_s)


# --- keep-alive ---------------------------------------------------------------------------------


def mixed(path: str, n: int) -> tuple[int, dict[str, str], float]:
    """200 for /ok*, 404 for /missing*, /busy* answers 503 (Retry-After: 0) once, then 200."""
    if path.startswith("/missing"):
        return 404, {}, 0
    if path.startswith("/busy") and n == 0:
        return 503, {"Retry-After": "0"}, 0
    return 200, {}, 0


def test_sequential_requests_to_a_host_share_one_connection() -> None:
    paths = [f"/{kind}{i}" for i in range(5) for kind in ("ok", "missing", "busy")]
    with serving(mixed) as server, fetcher_for(retries=1) as fetcher:
        results = [fetch_all(fetcher, [server.url + path], 1)[0] for path in paths]
    assert [r if isinstance(r, str) else "ok" for r in results] == ["ok", "http_error", "ok"] * 5
    assert len(server.hits) == 20  # each /busy twice: a 503, then its retry
    print(f"\n{len(server.hits)} sequential requests, {len(server.ports)} TCP connection(s)")
    assert len(server.ports) == 1, "a response (an error's too) did not keep its connection"


def test_parallel_requests_open_no_more_connections_than_in_flight() -> None:
    paths = [f"/{kind}{i}" for i in range(20) for kind in ("ok", "missing")]
    with (
        serving(mixed) as server,
        fetcher_for(retries=0, per_host_concurrency=4, per_host_start=4) as fetcher,
    ):
        fetch_all(fetcher, [server.url + path for path in paths], 4)
    print(f"\n40 requests from 4 threads: {len(server.ports)} TCP connections")
    assert len(server.hits) == 40 and len(server.ports) <= 4


# --- adaptive concurrency -----------------------------------------------------------------------


def test_429_with_retry_after_halves_concurrency_and_pauses_the_host() -> None:
    def answer(path: str, n: int) -> tuple[int, dict[str, str], float]:
        if path == "/busy" and n == 0:
            return 429, {"Retry-After": "1"}, 0
        return 200, {}, 0.3

    with (
        serving(answer) as server,
        fetcher_for(retries=1, per_host_concurrency=4, per_host_start=4) as fetcher,
    ):
        busy, outcome = in_thread(lambda: fetcher.get(f"{server.url}/busy"))
        wait_for(lambda: bool(server.hits) and server.hits[0].done < float("inf"))
        time.sleep(0.2)  # the client has read the 429
        limiter = fetcher.host_limiter(server.url)
        cut_to, paused_for = limiter.limit, limiter.paused_for()
        pages = fetch_all(fetcher, [f"{server.url}/p{i}" for i in range(4)], 4)
        busy.join(5)
    assert all(isinstance(page, FetchResult) for page in pages)
    assert isinstance(outcome.get("result"), FetchResult)  # its retry came after Retry-After
    refused, later = server.hits[0], server.hits[1:]
    quiet_s = min(hit.arrived for hit in later) - refused.replied
    first_back = min(hit.done for hit in later)
    at_once = sum(hit.arrived < first_back for hit in later)
    print(f"\nafter the 429: {quiet_s:.2f} s without requests, then {at_once} at once")
    assert quiet_s >= 0.99, "the host got requests during its Retry-After"
    assert at_once <= 2, "the concurrency was not halved"
    assert cut_to == 2 and 0.5 < paused_for <= 1


def adapting(answer: Answer, paths: list[str], serial: bool = False) -> tuple[list[int], int, int]:
    """`paths` fetched by 6 threads of a fresh fetcher (1 request at once to start, 4 at most):
    the requests in flight at each arrival, the most at once, and the limit reached."""
    with (
        serving(answer, serial) as server,
        fetcher_for(per_host_concurrency=4, per_host_start=1) as fetcher,
    ):
        fetch_all(fetcher, [server.url + path for path in paths], 6)
        limit = fetcher.host_limiter(server.url).limit
    profile = [hit.in_flight for hit in server.hits]
    print(f"\nin flight at each arrival: {profile}")
    return profile, server.max_in_flight, limit


def test_fast_flat_host_grows_to_the_maximum() -> None:
    profile, most, limit = adapting(flat(0.2), [f"/p{i}" for i in range(40)])
    assert profile[:4] == [1, 1, 1, 1], "a host's first requests come one at a time"
    assert most == 4
    assert limit >= 3  # at the maximum, or one below it when a starved CPU made a round slow


def test_host_slowing_with_concurrency_stays_low() -> None:
    # One request served at a time: each request more at once adds 0.3 s to every response
    # (well above the client's own delays on a busy machine, which hide the queueing).
    _, most, limit = adapting(flat(0.3), [f"/p{i}" for i in range(16)], serial=True)
    assert most <= 2, "more requests at once although latency rose"
    assert limit <= 2


def test_flat_host_serving_documents_and_images_grows_to_the_maximum() -> None:
    # An IIIF image server: each page's info.json comes back far sooner than its image.
    def answer(path: str, n: int) -> tuple[int, dict[str, str], float]:
        if path.endswith("info.json"):
            return 200, {"Content-Type": "application/json"}, 0.01
        return 200, {"Content-Type": "image/jpeg"}, 0.2

    urls = [f"/p{i}/{name}" for i in range(30) for name in ("info.json", "full.jpg")]
    profile, most, limit = adapting(answer, urls)
    assert profile[:4] == [1, 1, 1, 1], "a host's first requests come one at a time"
    assert most == 4
    assert limit >= 3  # at the maximum, or one below it when a starved CPU made a round slow


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_wakes_requests_waiting_for_a_place_or_a_retry_after() -> None:
    def paused(path: str, n: int) -> tuple[int, dict[str, str], float]:
        return (429, {"Retry-After": "30"}, 0) if path == "/busy" else (200, {}, 0)

    with (
        serving(paused) as pausing,
        serving(lambda path, n: (200, {}, 30 if path == "/slow" else 0)) as full,
        fetcher_for(retries=0, per_host_concurrency=1, read_timeout_s=60) as fetcher,
    ):
        with pytest.raises(FetchError):
            fetcher.get(f"{pausing.url}/busy")  # the host is now paused for 30 s
        scope = FetchScope()
        threads = [in_thread(lambda: fetcher.get(f"{full.url}/slow", scope=scope))]
        wait_for(lambda: len(full.hits) == 1)  # the host's one place is taken
        threads += [
            in_thread(lambda url=url: fetcher.get(url, scope=scope))
            for url in (f"{full.url}/page", f"{pausing.url}/page")
        ]
        time.sleep(0.35)  # all three are blocked: a slow answer, a full host, a Retry-After
        asked = time.monotonic()
        scope.cancel()
        for thread, _ in threads:
            thread.join(2)
        woke_s = time.monotonic() - asked
        again = fetcher.get(f"{full.url}/again")  # the cancelled ones gave their places back
    codes = [getattr(outcome.get("error"), "code", outcome) for _, outcome in threads]
    print(f"\ncancel woke all three in {woke_s:.3f} s")
    assert codes == ["cancelled"] * 3 and woke_s < 1
    assert [hit.path for hit in pausing.hits] == ["/busy"], "a paused host got a request"
    assert [hit.path for hit in full.hits] == ["/slow", "/again"]
    assert again.content == BODY


# --- the limiter alone -------------------------------------------------------------------------


def test_429s_of_one_round_halve_the_limit_once() -> None:
    limiter = HostLimiter("h", start=4, maximum=4, tolerance=0.5)
    permits = [limiter.acquire(lambda: False) for _ in range(4)]
    for permit in permits:  # all four were in flight when the host said 429
        assert permit is not None
        permit.throttled = True
        limiter.release(permit)
    assert limiter.limit == 2, "answers to requests sent before the cut cut it again"
    again = limiter.acquire(lambda: False)
    assert again is not None
    again.throttled = True
    limiter.release(again)  # a request sent after the cut: the overload goes on
    assert limiter.limit == 1


def saturated_batch(limiter: HostLimiter, latency_s: float) -> int:
    """As many requests as the limit allows at once, answered in `latency_s`; the limit after."""
    permits = [limiter.acquire(lambda: False) for _ in range(limiter.limit)]
    for permit in permits:
        assert permit is not None
        permit.latency_s = latency_s
        limiter.release(permit)
    return limiter.limit


def test_a_fresh_host_doubles_until_it_shows_strain_then_grows_by_one() -> None:
    limiter = HostLimiter("h", start=1, maximum=16, tolerance=0.5)
    fresh = [saturated_batch(limiter, 0.01) for _ in range(7)]
    # ROUND_MIN (4) responses a round: four batches of one, two of two, one of four.
    assert fresh == [1, 1, 1, 2, 2, 4, 8], fresh
    permit = limiter.acquire(lambda: False)
    assert permit is not None
    permit.throttled = True
    limiter.release(permit)
    assert limiter.limit == 4
    after = [saturated_batch(limiter, 0.01) for _ in range(3)]
    assert after == [5, 6, 7], f"after a 429 the host is probed one request at a time: {after}"


def test_a_latency_rise_in_slow_start_goes_back_to_the_last_good_level() -> None:
    limiter = HostLimiter("h", start=1, maximum=32, tolerance=0.5)
    grown = [saturated_batch(limiter, 0.01) for _ in range(7)]
    assert grown[-1] == 8
    # Queueing at 8: every response much slower. Back to 4 at once, then one step at a time.
    assert saturated_batch(limiter, 0.3) == 4
    assert saturated_batch(limiter, 0.3) == 3


def test_host_slower_for_good_is_not_held_at_one_request() -> None:
    limiter = HostLimiter("h", start=1, maximum=4, tolerance=0.5)
    fast = [saturated_batch(limiter, 0.01) for _ in range(12)]
    slow = [saturated_batch(limiter, 0.5) for _ in range(20)]
    print(f"\nlimit after each batch: 10 ms {fast}, then 500 ms {slow}")
    assert fast[-1] == 4
    assert 1 in slow, "the latency jumped fiftyfold, the limit did not come down"
    assert slow[-1] == 4, "flat again at its new latency, the host was not given more"


def test_idle_host_starts_over_and_settings_reach_the_limiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(throttle, "IDLE_RESET_S", 0.2)
    fetch = FetchSettings(per_host_start=3, per_host_concurrency=5, latency_tolerance=0.2)
    limiter = SafeFetcher.from_settings(fetch).host_limiter("http://example.org/a.jpg")
    assert (limiter.limit, limiter.maximum, limiter.tolerance) == (3, 5, 0.2)
    permit = limiter.acquire(lambda: False)
    assert permit is not None
    permit.throttled = True
    limiter.release(permit)
    assert limiter.limit == 1
    time.sleep(0.3)
    assert limiter.acquire(lambda: False) is not None and limiter.limit == 3


def test_retry_after_as_an_http_date() -> None:
    in_5_s = _retry_after(formatdate(time.time() + 5, usegmt=True))
    assert in_5_s is not None and 3 < in_5_s <= 5
    assert _retry_after(formatdate(time.time() - 5, usegmt=True)) == 0
    assert _retry_after("soon") is None and _retry_after("120") == 30

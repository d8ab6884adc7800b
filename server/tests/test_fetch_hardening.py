"""The safe fetcher under hostile servers (no stack: local servers in threads).

- cancel and the response deadline end downloads: connections closed, per-host slots freed,
  retry back-offs cut short (a server trickling bytes defeats the per-read timeout);
- the address check happens before connecting: a redirect to an internal address never reaches
  it, and closed and open internal ports look the same;
- IPv6 addresses that lead to internal IPv4 hosts (NAT64, 6to4, Teredo, IPv4-compatible) and
  site-local ones are refused;
- timeouts say whether connecting or reading timed out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from model.pipeline.prefetch import Prefetcher
from model.sources import addresses
from model.sources.addresses import AddressPolicy
from model.sources.fetch import FetchError, FetchScope, SafeFetcher

LOOPBACK = ["127.0.0.1"]


# --- a server that trickles its body ------------------------------------------------------------


@dataclass
class TrickleServer:
    """HTTP on 127.0.0.1: `/ok...` answers `ok_body` at once, any other path announces a large
    body and sends one byte every `interval_s` until the client goes away (or `stop()`)."""

    interval_s: float = 0.1
    ok_body: bytes = b"ok"
    accepted: int = 0
    closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=32)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def open(self) -> int:
        with self._lock:
            return self.accepted - self.closed

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = _read_head(conn)
            path = request.split(b" ")[1] if request.count(b" ") >= 2 else b"/"
            if path.startswith(b"/ok"):
                conn.sendall(_head(len(self.ok_body)) + self.ok_body)
                _read_head(conn)  # keep-alive: wait until the client closes
            else:
                self._trickle(conn)
        with self._lock:
            self.closed += 1

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.sendall(_head(1_000_000))
            while not self._stopped.is_set():
                conn.sendall(b"x")
                readable, _, _ = select.select([conn], [], [], self.interval_s)
                if readable and not conn.recv(1024):
                    return  # the client closed (or shut down) its end
        except OSError:
            return


def _head(length: int) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer()
    yield server
    server.stop()


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `work` in a thread; the dict gets its `result` or `error`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever it was
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --- (2) cancel and the response deadline -------------------------------------------------------


def test_cancel_closes_connections_and_frees_host_slots(trickle: TrickleServer) -> None:
    fetcher = SafeFetcher(allow=LOOPBACK, read_timeout_s=1, per_host_concurrency=1, retries=0)
    scope = FetchScope()
    reading, read = in_thread(lambda: fetcher.get(f"{trickle.url}/a.jpg", scope=scope))
    assert trickle.wait_for(lambda: trickle.open == 1, 5)
    waiting, waited = in_thread(lambda: fetcher.get(f"{trickle.url}/b.jpg", scope=scope))
    time.sleep(1.5)  # the trickle outlasts the per-read timeout; the second waits for the slot
    assert reading.is_alive() and waiting.is_alive() and trickle.accepted == 1

    scope.cancel()
    reading.join(3)
    waiting.join(3)
    assert not reading.is_alive() and not waiting.is_alive()
    assert read["error"].code == "cancelled" and waited["error"].code == "cancelled"
    assert trickle.wait_for(lambda: trickle.open == 0, 3), "the trickled connection stayed open"
    # The slot is free: the next fetch from that host (another task) starts at once.
    started = time.monotonic()
    assert fetcher.get(f"{trickle.url}/ok.jpg").content == b"ok"
    assert time.monotonic() - started < 2
    with pytest.raises(FetchError) as refused:  # a cancelled scope starts nothing new
        fetcher.get(f"{trickle.url}/ok.jpg", scope=scope)
    assert refused.value.code == "cancelled"


def test_cancel_cuts_a_retry_back_off_short() -> None:
    with http_server({"/busy": (503, {"Retry-After": "30"}, b"")}) as base:
        fetcher = SafeFetcher(allow=LOOPBACK, retries=2)
        scope = FetchScope()
        thread, outcome = in_thread(lambda: fetcher.get(f"{base}/busy", scope=scope))
        time.sleep(0.5)  # the 503 came back: the fetcher sleeps 30 s before its retry
        scope.cancel()
        thread.join(2)
        assert not thread.is_alive(), "the back-off ignored the cancel"
        assert outcome["error"].code == "cancelled"


def test_response_deadline_ends_a_trickle(trickle: TrickleServer) -> None:
    fetcher = SafeFetcher(allow=LOOPBACK, read_timeout_s=1, retries=0, response_deadline_s=1)
    started = time.monotonic()
    thread, outcome = in_thread(lambda: fetcher.get(f"{trickle.url}/slow.jpg"))
    thread.join(5)
    assert not thread.is_alive(), "a trickle of one byte per 0.1 s ran past the deadline"
    assert time.monotonic() - started < 4
    error = outcome["error"]
    assert error.code == "timeout" and error.message.startswith("timed out reading from")
    assert trickle.wait_for(lambda: trickle.open == 0, 3)


def test_prefetcher_close_cancels_the_downloads_in_flight(trickle: TrickleServer) -> None:
    # Two downloads in flight at once from the start (a host's limit starts at 1 by default).
    fetcher = SafeFetcher(allow=LOOPBACK, read_timeout_s=1, retries=0, per_host_start=2)
    scope = FetchScope()
    urls = [f"{trickle.url}/{i}.jpg" for i in range(4)]
    with Prefetcher(
        urls,
        lambda url: fetcher.get(url, scope=scope),
        lambda url, exc: exc,
        threads=2,
        depth=2,
        on_close=scope.cancel,
    ):
        assert trickle.wait_for(lambda: trickle.open == 2, 5)
    assert trickle.wait_for(lambda: trickle.open == 0, 3), "closing left downloads running"
    assert trickle.accepted == 2  # and started no others


# --- (4) the address check comes before the connection ------------------------------------------


@contextlib.contextmanager
def http_server(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    """A local server on 127.0.0.1 answering `routes` (path -> status, headers, body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def internal_port(host: str, listening: bool) -> Iterator[tuple[int, socket.socket]]:
    """A port on a non-allow-listed loopback address: listening, or bound and closed."""
    sock = socket.socket()
    sock.bind((host, 0))
    if listening:
        sock.listen(8)
    sock.settimeout(1)
    try:
        yield sock.getsockname()[1], sock
    finally:
        sock.close()


def assert_never_connected(listener: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        conn, peer = listener.accept()
        conn.close()
        pytest.fail(f"the internal port accepted a connection from {peer}")


def test_redirect_to_an_internal_port_never_connects() -> None:
    with internal_port("127.0.0.2", listening=True) as (port, listener):
        target = f"http://127.0.0.2:{port}/latest/meta-data/"
        jump = {"/jump": (302, {"Location": target}, b"")}
        with http_server(jump) as base, pytest.raises(FetchError) as refused:
            SafeFetcher(allow=LOOPBACK, retries=0).get(f"{base}/jump")
        assert refused.value.code == "blocked_address"
        assert_never_connected(listener)


def test_closed_and_open_internal_ports_give_the_same_error() -> None:
    codes = {}
    for listening in (True, False):
        with internal_port("127.0.0.3", listening) as (port, _):
            target = f"http://127.0.0.3:{port}/"
            jump = {"/jump": (302, {"Location": target}, b"")}
            with http_server(jump) as base, pytest.raises(FetchError) as refused:
                SafeFetcher(allow=LOOPBACK, retries=0).get(f"{base}/jump")
            codes[listening] = refused.value.code
    assert codes == {True: "blocked_address", False: "blocked_address"}


def test_dns_answer_changing_after_the_check_never_connects(monkeypatch) -> None:
    """Rebinding: the early check sees a public address, the connection must not use a second
    answer that names an internal one."""
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34", "127.0.0.2", "127.0.0.2", "127.0.0.2"])

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "rebind.example":
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with internal_port("127.0.0.2", listening=True) as (port, listener):
        with pytest.raises(FetchError) as refused:
            SafeFetcher(retries=0).get(f"http://rebind.example:{port}/")
        assert refused.value.code == "blocked_address"
        assert_never_connected(listener)


def test_allowed_hosts_still_fetch_through_the_checked_connection() -> None:
    with http_server({"/a": (302, {"Location": "/b"}, b""), "/b": (200, {}, b"pixels")}) as base:
        result = SafeFetcher(allow=LOOPBACK, retries=0).get(f"{base}/a")
    assert result.content == b"pixels" and result.url.endswith("/b")


# --- (5) IPv6 addresses that lead to IPv4 hosts, and special ranges ----------------------------


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix -> 169.254.169.254
        "64:ff9b::7f00:1",  # -> 127.0.0.1
        "64:ff9b::a00:1",  # -> 10.0.0.1
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 (RFC 8215)
        "64:ff9b:1::808:808",  # local-use NAT64, whatever it embeds
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "::a9fe:a9fe",
        "::8.8.8.8",
        "fec0::1",  # site-local (deprecated)
        "fec0:0:0:1::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45
        "2001:0:a00:1:8000:63bf:3fff:fdd2",  # Teredo server 10.0.0.1
    ],
)
def test_ipv6_forms_of_internal_addresses_are_refused(address: str) -> None:
    assert not AddressPolicy().address_allowed(address)


@pytest.mark.parametrize(
    "address", ["64:ff9b::808:808", "2002:808:808::1", "2001:4860:4860::8888", "8.8.8.8"]
)
def test_public_ipv6_and_ipv4_addresses_pass(address: str) -> None:
    assert AddressPolicy().address_allowed(address)


def test_embedded_teredo_addresses_are_checked() -> None:
    # Python's own is_global has changed between releases: the Teredo check must not rely on it.
    teredo = ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert [str(ip) for ip in addresses._embedded_ipv4(teredo)] == ["65.54.227.120", "192.0.2.45"]


# --- (12) timeouts say what timed out ------------------------------------------------------------


def test_read_timeout_in_the_body_says_reading() -> None:
    with stalling_server(send_head=True) as base:
        fetcher = SafeFetcher(allow=LOOPBACK, read_timeout_s=0.3, retries=0)
        with pytest.raises(FetchError) as failed:
            fetcher.get(f"{base}/page.jpg")
    assert failed.value.code == "timeout"
    assert failed.value.message == f"timed out reading from {base}/page.jpg"


def test_read_timeout_before_the_headers_says_reading() -> None:
    with stalling_server(send_head=False) as base:
        fetcher = SafeFetcher(allow=LOOPBACK, read_timeout_s=0.3, retries=0)
        with pytest.raises(FetchError) as failed:
            fetcher.get(f"{base}/page.jpg")
    assert failed.value.code == "timeout"
    assert failed.value.message == f"timed out reading from {base}/page.jpg"


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops further connection attempts."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    time.sleep(0.2)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def test_connect_timeout_says_connecting() -> None:
    with unanswered_port() as port:
        fetcher = SafeFetcher(allow=LOOPBACK, connect_timeout_s=0.3, retries=0)
        with pytest.raises(FetchError) as failed:
            fetcher.get(f"http://127.0.0.1:{port}/page.jpg")
    assert failed.value.code == "connect_timeout"
    assert failed.value.message == f"timed out connecting to http://127.0.0.1:{port}/page.jpg"


@contextlib.contextmanager
def stalling_server(send_head: bool, head: bytes | None = None) -> Iterator[str]:
    """Accepts, reads the request, then (after the headers, or before them, or after `head`)
    sends nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)
                _read_head(conn)
                if head is not None:
                    conn.sendall(head)
                elif send_head:
                    conn.sendall(_head(1000) + b"x")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


# --- a POST (webhook deliveries): no answer before the deadline is no answer -------------------


def test_a_status_line_then_nothing_is_not_an_answer() -> None:
    """The deadline cuts the connection, and headers that end at EOF would read as complete: a
    receiver that sent `200 OK` and hung was taken as a delivery (at-least-once broken)."""
    with stalling_server(send_head=False, head=b"HTTP/1.1 200 OK\r\n") as base:
        fetcher = SafeFetcher(allow=LOOPBACK, read_timeout_s=5, response_deadline_s=0.5)
        with pytest.raises(FetchError) as failed:
            fetcher.post(f"{base}/hook", b"{}")
    assert failed.value.code == "timeout"


def test_a_slow_dns_lookup_is_within_the_deadline(monkeypatch) -> None:
    real = socket.getaddrinfo

    def slow(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "slow-dns.example":
            time.sleep(3)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    fetcher = SafeFetcher(allow=["slow-dns.example"], response_deadline_s=0.5)
    started = time.monotonic()
    with pytest.raises(FetchError) as failed:
        fetcher.post("http://slow-dns.example:9/hook", b"{}")
    assert failed.value.code == "timeout", failed.value.message
    assert time.monotonic() - started < 2  # not the lookup's 3 s


def test_connecting_is_within_the_deadline() -> None:
    with unanswered_port() as port:
        fetcher = SafeFetcher(allow=LOOPBACK, connect_timeout_s=5, response_deadline_s=0.5)
        started = time.monotonic()
        with pytest.raises(FetchError) as failed:
            fetcher.post(f"http://127.0.0.1:{port}/hook", b"{}")
    assert failed.value.code in ("timeout", "connect_timeout"), failed.value.message
    assert time.monotonic() - started < 2  # not the connect timeout's 5 s

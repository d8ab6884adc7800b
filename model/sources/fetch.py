"""Safe fetching: every network read of the service goes through `SafeFetcher.get`.

- http/https only, no environment proxies;
- before any connection is opened the host is resolved and every address it resolves to is
  checked; the socket then connects to a checked address only. So neither a DNS answer that
  changes between check and connect nor a redirect can reach an internal address, nor even
  probe one (a closed and an open internal port both give `blocked_address`, and the target
  never sees a connection); every redirect opens its connection the same way;
- connect/read timeouts, a deadline for each whole response (a server trickling bytes defeats
  a per-read timeout), a streamed body-size cap, bounded redirects;
- retries with backoff on connection errors, timeouts, 429 and 5xx, honouring Retry-After;
- adaptive concurrency per host (`throttle.HostLimiter`, shared by the download threads of a
  process): it starts at `per_host_start` requests at once, grows while the host's latency
  stays flat (doubling until the host first shows strain, then by one), up to
  `per_host_concurrency`, halves on 429/503/timeouts and keeps new requests away from the host
  until its `Retry-After` has passed, so a library's server is never hammered; with
  `share_host_slots` (the worker), the sum over every process on the same Redis is capped at
  `per_host_concurrency` too (`host_slots.py`);
- keep-alive: one pooled session, and small error bodies are read to the end so that their
  connection is reused too (a 429 costs the host no new TCP connection);
- a `FetchScope` (one per task) cancels that task's fetches: their sockets are shut down, waits
  for a per-host slot (or a Retry-After) and retry back-offs end, so a cancelled or timed-out
  job leaves no thread holding a connection or a slot.
"""

from __future__ import annotations

import contextlib
import functools
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util.connection import allowed_gai_family

# The address policy is in a light module of its own: the HTTP process checks with it too.
from model.sources.addresses import AddressPolicy
from model.sources.host_slots import HostSlots
from model.sources.throttle import HostLimiter, Permit

if TYPE_CHECKING:
    from redis import Redis

    from model.settings import FetchSettings

RETRY_STATUSES = {429, 500, 502, 503, 504}
THROTTLE_STATUSES = {429, 503}  # the host says it is overloaded: fewer requests at once
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is cut to this (retry wait and host pause)
# Host limiters one process keeps at most (beyond it, idle ones are forgotten): far more hosts
# than a worker's tasks read at once.
MAX_HOST_LIMITERS = 256
DRAIN_MAX_BYTES = 64 * 1024  # error bodies up to this are read so that the connection is kept


class FetchError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status  # the HTTP status of an `http_error` (callers act on 400 vs 404)


# --- cancellation: scopes, attempts ------------------------------------------------------------

_local = threading.local()  # `attempt`: the request this thread is making (its sockets join it)


class _Attempt:
    """One request (redirects included) and the sockets it uses, so that a cancel or the
    response deadline can shut them down from another thread: a blocked read returns at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[socket.socket] = []
        self.reason: str | None = None  # "cancelled" or "deadline" once aborted
        self.deadline = math.inf  # time.monotonic() of the response deadline: DNS and connect

    def adopt(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the same kernel socket (which shutdown acts on): TLS wrapping
        # detaches the socket object urllib3 connected, and an SSLSocket cannot be dup()ed.
        if sock.fileno() < 0:
            return  # closed already: nothing left to shut down
        handle = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self._lock:
            self._handles.append(handle)
            if self.reason is not None:
                _shutdown(handle)

    def abort(self, reason: str) -> None:
        with self._lock:  # held while shutting down: close() cannot free a descriptor meanwhile
            if self.reason is not None:
                return
            self.reason = reason
            for handle in self._handles:
                _shutdown(handle)

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()


def _shutdown(handle: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by urllib3, or never connected
        handle.shutdown(socket.SHUT_RDWR)


def _join_attempt(sock: socket.socket | None) -> None:
    attempt: _Attempt | None = getattr(_local, "attempt", None)
    if attempt is not None and sock is not None:
        attempt.adopt(sock)


class FetchScope:
    """Cancellation handle for one task's fetches (download threads included). `cancel()`
    shuts down the sockets of the requests in flight, wakes waits for a per-host slot and retry
    back-offs, and refuses new requests: each ends with `FetchError("cancelled")`."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._attempts: set[_Attempt] = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            attempts = list(self._attempts)
        for attempt in attempts:
            attempt.abort("cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) if the scope is or gets cancelled."""
        return self._cancelled.wait(seconds)

    @contextmanager
    def attempt(self) -> Iterator[_Attempt]:
        attempt = _Attempt()
        with self._lock:
            if self.cancelled:
                attempt.abort("cancelled")
            self._attempts.add(attempt)
        try:
            yield attempt
        finally:
            with self._lock:
                self._attempts.discard(attempt)
            attempt.close()


# --- connections: check before connecting ------------------------------------------------------


def _left_s() -> float:
    """Seconds left before this thread's attempt's deadline (inf outside an attempt)."""
    attempt: _Attempt | None = getattr(_local, "attempt", None)
    return math.inf if attempt is None else attempt.deadline - time.monotonic()


def _resolve(host: str, port: int) -> list[Any]:
    """The host's addresses, looked up within the attempt's deadline: the C resolver takes no
    timeout and cannot be interrupted, so a slow lookup is left to finish on its own thread."""
    found: list[Any] = []
    failed: list[BaseException] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)

    left = _left_s()
    if left == math.inf:
        lookup()
    else:
        thread = threading.Thread(target=lookup, name="dns", daemon=True)
        thread.start()
        thread.join(max(0.0, left))
        if thread.is_alive():
            raise FetchError("timeout", f"resolving {host} outlasted the attempt's deadline")
    if failed:
        if isinstance(failed[0], socket.gaierror | UnicodeError):
            raise FetchError("dns_error", f"cannot resolve {host}") from failed[0]
        raise failed[0]
    return found


def _connect_checked(conn: HTTPConnection, policy: AddressPolicy) -> socket.socket:
    """Resolve, refuse the host if any of its addresses is not allowed, connect to a checked
    address (never to whatever a second DNS lookup might say)."""
    host = conn.host.strip("[]")
    infos = _resolve(host, conn.port)
    if not policy.host_allowed(host):
        for info in infos:
            if not policy.address_allowed(info[4][0]):
                raise FetchError("blocked_address", f"{host} resolves to a non-public address")
    return _connect_first(conn, infos)


def _connect_first(conn: HTTPConnection, infos: list[Any]) -> socket.socket:
    timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        left = _left_s()  # every address tried within the attempt's deadline
        if left <= 0:
            error = TimeoutError("the attempt's deadline passed")
            break
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(left if timeout is None else min(timeout, left))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out") from error
    raise NewConnectionError(conn, f"failed to establish a new connection: {error}") from error


class _CheckedConnect:
    """Mixin of the pools' connection classes (the first request and every redirect)."""

    policy: AddressPolicy
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = _connect_checked(self, self.policy)  # type: ignore[arg-type]
        _join_attempt(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _join_attempt(self.sock)  # a pooled connection, reused by this thread's attempt
        super().request(*args, **kwargs)  # type: ignore[misc]


def _guarded_classes(policy: AddressPolicy) -> dict[str, type]:
    """Connection pools whose sockets only ever connect to addresses the policy allows."""

    class GuardedHTTPConnection(_CheckedConnect, HTTPConnection):
        pass

    class GuardedHTTPSConnection(_CheckedConnect, HTTPSConnection):
        pass

    GuardedHTTPConnection.policy = policy
    GuardedHTTPSConnection.policy = policy

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: AddressPolicy, pool_maxsize: int = 10) -> None:
        self._pool_classes = _guarded_classes(policy)
        super().__init__(max_retries=0, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


# --- the fetcher -------------------------------------------------------------------------------


@dataclass
class FetchResult:
    url: str  # final URL after redirects
    content: bytes
    content_type: str | None
    attempts: int


class SafeFetcher:
    def __init__(
        self,
        allow: Iterable[str] = (),
        connect_timeout_s: float = 5,
        read_timeout_s: float = 30,
        max_bytes: int = 50 * 1024 * 1024,
        max_redirects: int = 3,
        user_agent: str = "Scriptorium",
        retries: int = 2,
        backoff_s: float = 0.5,
        per_host_concurrency: int = 4,
        response_deadline_s: float = 60,
        per_host_start: int = 1,
        latency_tolerance: float = 0.5,
    ) -> None:
        self.policy = AddressPolicy.from_list(allow)
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.response_deadline_s = response_deadline_s
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.per_host_concurrency = max(1, per_host_concurrency)
        self.per_host_start = per_host_start
        self.latency_tolerance = latency_tolerance
        # Most recently used last; bounded (MAX_HOST_LIMITERS): a pool process lives for many
        # tasks, and each distinct host spelling would otherwise stay for good (2 KB each).
        self._limiters: OrderedDict[str, HostLimiter] = OrderedDict()
        self._limiters_lock = threading.Lock()
        # Places at each host shared with every other process on the same Redis (the worker's
        # fetchers: share_host_slots); None: this process's own limit only.
        self.slots: HostSlots | None = None
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies from the environment
        self.session.max_redirects = max_redirects
        self.session.headers["User-Agent"] = user_agent
        # One pool per host keeps up to pool_maxsize idle connections: enough for every request
        # the limiter lets in at once, so each is reused (keep-alive) instead of discarded.
        adapter = _GuardedAdapter(self.policy, pool_maxsize=max(10, self.per_host_concurrency))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_settings(cls, fetch: FetchSettings) -> SafeFetcher:
        """The fetcher the service uses, configured by flask_config.yaml's `fetch` section."""
        return cls(
            allow=fetch.allow,
            connect_timeout_s=fetch.connect_timeout_s,
            read_timeout_s=fetch.read_timeout_s,
            max_bytes=fetch.max_bytes,
            max_redirects=fetch.max_redirects,
            user_agent=fetch.user_agent,
            retries=fetch.retries,
            per_host_concurrency=fetch.per_host_concurrency,
            response_deadline_s=fetch.response_deadline_s,
            per_host_start=fetch.per_host_start,
            latency_tolerance=fetch.latency_tolerance,
        )

    def share_host_slots(self, redis: Redis) -> None:
        """Cap the requests at once to each host at `per_host_concurrency` across every process
        using `redis` (host_slots.py); a place outlives its process by a short lease at most."""
        self.slots = HostSlots(redis, self.per_host_concurrency)

    def scoped(self, scope: FetchScope) -> ScopedFetcher:
        """This fetcher with every `get` in `scope` (what a job hands to its loaders)."""
        return ScopedFetcher(self, scope)

    def check_url(self, url: str) -> None:
        """Early, friendly refusal of URLs that can never be fetched (the socket check is final)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError("bad_scheme", f"only http and https URLs are allowed, not {url!r}")
        if not parts.hostname:
            raise FetchError("bad_url", f"URL has no host: {url!r}")
        if self.policy.host_allowed(parts.hostname):
            return
        infos = _resolve(parts.hostname, parts.port or 80)  # within an attempt's deadline
        if not all(self.policy.address_allowed(info[4][0]) for info in infos):
            raise FetchError(
                "blocked_address", f"{parts.hostname} resolves to a non-public address"
            )

    def host_limiter(self, url: str) -> HostLimiter:
        """The concurrency limiter of `url`'s host (one per host and port in this process)."""
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port or ''}"
        with self._limiters_lock:
            limiter = self._limiters.get(host)
            if limiter is not None:
                self._limiters.move_to_end(host)
                return limiter
        slots = self.slots
        learned = slots.learned(host) if slots else None  # Redis: not under the lock
        with self._limiters_lock:
            limiter = self._limiters.get(host)  # another thread may have made it meanwhile
            if limiter is None:
                limiter = self._limiters[host] = HostLimiter(
                    host,
                    self.per_host_start,
                    self.per_host_concurrency,
                    self.latency_tolerance,
                    learned=learned,
                    on_round=functools.partial(slots.learn, host) if slots else None,
                )
                self._evict_idle_limiters()
            return limiter

    def _evict_idle_limiters(self) -> None:
        """Past MAX_HOST_LIMITERS, drop the least recently used limiters that are idle (nothing
        in flight, no Retry-After pending): what one learnt is in Redis (`learned`), and after
        IDLE_RESET_S it would start over anyway. Busy ones stay, however many."""
        excess, looked = len(self._limiters) - MAX_HOST_LIMITERS, 0
        while excess > 0 and looked < len(self._limiters):
            host, limiter = next(iter(self._limiters.items()))  # the least recently used
            looked += 1
            if limiter.idle():
                del self._limiters[host]
                excess -= 1
            else:
                self._limiters.move_to_end(host)  # busy: the idle ones go first

    def get(
        self, url: str, max_bytes: int | None = None, scope: FetchScope | None = None
    ) -> FetchResult:
        """Fetch `url`; `max_bytes` lowers the body cap (manifests and info.json are small);
        cancelling `scope` ends the fetch (in any thread) with `FetchError("cancelled")`."""
        self.check_url(url)
        scope = scope or FetchScope()
        cap = min(max_bytes, self.max_bytes) if max_bytes else self.max_bytes
        limiter = self.host_limiter(url)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._get_held(url, attempt, cap, scope, limiter)
            except _Retryable as exc:
                if attempt > self.retries:
                    raise exc.error from None
                backoff = self.backoff_s * 2 ** (attempt - 1)
                if scope.wait(exc.wait_s if exc.wait_s is not None else backoff):
                    raise _cancelled(url) from None

    def post(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        """One POST (webhook deliveries), guarded like `get`: the URL checked, every address
        checked before connecting, the connect and read timeouts, the response deadline. Never a
        redirect followed (a 3xx is the answer), no retries (the caller schedules them), the
        answer's body never read. Returns the HTTP status; FetchError when no answer came."""
        with FetchScope().attempt() as attempt, self._watched(attempt):
            self.check_url(url)  # its DNS lookup too within the deadline
            try:
                with self.session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    stream=True,
                    allow_redirects=False,
                ) as resp:
                    status = resp.status_code
            except requests.exceptions.RequestException as exc:
                error = self._aborted(url, attempt.reason) if attempt.reason else None
                error = error or _network_error(url, exc)
                raise (error.error if isinstance(error, _Retryable) else error) from exc
            if attempt.reason is not None:  # a status line, then nothing until the deadline
                error = self._aborted(url, attempt.reason)  # cut it (headers end at EOF): no
                raise error.error if isinstance(error, _Retryable) else error  # answer came
            return status

    def _get_held(
        self, url: str, number: int, max_bytes: int, scope: FetchScope, limiter: HostLimiter
    ) -> FetchResult:
        """One attempt in a place of the host's limit (not held while sleeping before a retry);
        what the response says about the host's load goes back to the limiter."""
        with self._holding(limiter, scope, url) as permit:
            try:
                return self._get_once(url, number, max_bytes, scope, permit)
            except _Retryable as exc:
                permit.throttled = exc.throttle
                permit.retry_after_s = exc.wait_s
                raise

    @contextmanager
    def _holding(self, limiter: HostLimiter, scope: FetchScope, url: str) -> Iterator[Permit]:
        """Hold a place in this process's limit for the host, then one of the places shared
        by every process (if shared); a cancel ends the wait for either."""
        permit = limiter.acquire(lambda: scope.cancelled)
        if permit is None:
            raise _cancelled(url)
        token: str | None = ""
        try:
            if self.slots is not None:
                token = self.slots.take(limiter.host, lambda: scope.cancelled)
                if token is None:
                    raise _cancelled(url)
                # The latency the limiter learns from starts now: not the wait for a place.
                permit.started = time.monotonic()
            yield permit
        finally:
            if token and self.slots is not None:
                self.slots.give_back(limiter.host, token)
            limiter.release(permit)

    def _get_once(
        self, url: str, number: int, max_bytes: int, scope: FetchScope, permit: Permit
    ) -> FetchResult:
        with scope.attempt() as attempt, self._watched(attempt):
            try:
                result = self._request(url, number, max_bytes, permit)
            except (FetchError, _Retryable) as exc:
                if attempt.reason is not None:  # however the read ended, it was cut short
                    raise self._aborted(url, attempt.reason) from exc
                raise
            if attempt.reason is not None:  # a body without Content-Length just stops
                raise self._aborted(url, attempt.reason)
            return result

    @contextmanager
    def _watched(self, attempt: _Attempt) -> Iterator[None]:
        """This thread's sockets join `attempt`, which is aborted at the response deadline."""
        timer = threading.Timer(self.response_deadline_s, attempt.abort, ("deadline",))
        timer.daemon = True
        attempt.deadline = time.monotonic() + self.response_deadline_s
        _local.attempt = attempt
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            _local.attempt = None

    def _aborted(self, url: str, reason: str) -> Exception:
        if reason == "cancelled":
            return _cancelled(url)
        error = FetchError(
            "timeout",
            f"timed out reading from {url}: no complete response "
            f"within {self.response_deadline_s:g} s",
        )
        return _Retryable(error, None, throttle=True)

    def _request(self, url: str, attempt: int, max_bytes: int, permit: Permit) -> FetchResult:
        try:
            with self.session.get(url, timeout=self.timeout, stream=True) as resp:
                latency_s = time.monotonic() - permit.started  # the headers are in
                _raise_for_status(resp)
                # Only a usable answer tells the host's latency (error pages come from elsewhere).
                permit.latency_s = latency_s
                permit.image = resp.headers.get("Content-Type", "").startswith("image/")
                return FetchResult(
                    resp.url,
                    self._read_capped(resp, max_bytes),
                    resp.headers.get("Content-Type"),
                    attempt,
                )
        except FetchError:
            raise
        except requests.exceptions.TooManyRedirects as exc:
            raise FetchError("too_many_redirects", f"too many redirects from {url}") from exc
        except requests.exceptions.InvalidSchema as exc:
            raise FetchError("bad_scheme", f"redirect to a non-http URL from {url}") from exc
        except requests.exceptions.RequestException as exc:
            raise _network_error(url, exc) from exc

    def _read_capped(self, resp: requests.Response, max_bytes: int) -> bytes:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError("too_large", f"body of {declared} bytes is over the limit")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too_large", f"body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


@dataclass
class ScopedFetcher:
    """A `SafeFetcher` whose every `get` runs in one task's `FetchScope`."""

    fetcher: SafeFetcher
    scope: FetchScope

    def get(self, url: str, max_bytes: int | None = None) -> FetchResult:
        return self.fetcher.get(url, max_bytes, scope=self.scope)

    def check_url(self, url: str) -> None:
        self.fetcher.check_url(url)


def _raise_for_status(resp: requests.Response) -> None:
    """Refuse an error status (retryable or not), its connection kept alive where cheap."""
    status = resp.status_code
    if status < 400:
        return
    _drain(resp)
    error = FetchError("http_error", f"HTTP {status} from {resp.url}", status)
    if status in RETRY_STATUSES:
        wait_s = _retry_after(resp.headers.get("Retry-After"))
        raise _Retryable(error, wait_s, throttle=status in THROTTLE_STATUSES)
    raise error


def _drain(resp: requests.Response) -> None:
    """Read a small error body to its end: the connection then goes back to the pool instead
    of being closed (keep-alive). A large or endless one is left unread, its connection closed."""
    declared = resp.headers.get("Content-Length")
    if declared is not None and not (declared.isdigit() and int(declared) <= DRAIN_MAX_BYTES):
        return
    size = 0
    with contextlib.suppress(requests.exceptions.RequestException):
        for chunk in resp.iter_content(chunk_size=DRAIN_MAX_BYTES):
            size += len(chunk)
            if size > DRAIN_MAX_BYTES:
                return


def _cancelled(url: str) -> FetchError:
    return FetchError("cancelled", f"fetch of {url} cancelled")


def _network_error(url: str, exc: requests.exceptions.RequestException) -> Exception:
    """What a failed request says: the guard's refusal, a timeout (connecting or reading: requests
    reports a read timeout inside the body as a ConnectionError), or a connection failure."""
    cause = _find_cause(exc, FetchError)
    if isinstance(cause, FetchError):
        return cause
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        error = FetchError("connect_timeout", f"timed out connecting to {url}")
        return _Retryable(error, None, throttle=True)
    if isinstance(exc, requests.exceptions.Timeout) or _find_cause(
        exc, (ReadTimeoutError, TimeoutError)
    ):
        error = FetchError("timeout", f"timed out reading from {url}")
        return _Retryable(error, None, throttle=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _Retryable(FetchError("connection_error", f"cannot connect: {url}"), None)
    return FetchError("fetch_error", f"cannot fetch {url}: {exc}")


class _Retryable(Exception):
    """A failed attempt worth another; `throttle`: it says the host is overloaded."""

    def __init__(self, error: FetchError, wait_s: float | None, throttle: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.wait_s = wait_s
        self.throttle = throttle


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), at most MAX_RETRY_AFTER_S."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None  # not an HTTP date (those are GMT)
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER_S)


def _find_cause(
    exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of `types` wherever urllib3/requests wrapped it."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, types):
            return current
        stack.extend(
            [
                current.__cause__,
                current.__context__,
                *[a for a in current.args if isinstance(a, BaseException)],
            ]
        )
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return None

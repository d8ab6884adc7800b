"""Safe fetching: every network read of the service goes through `SafeFetcher.get`.

- http/https only, no environment proxies;
- the address a socket actually connected to is checked (not only what DNS said beforehand), so a
  DNS answer that changes between check and connect cannot reach an internal address; every
  redirect opens a new connection and is checked the same way;
- connect/read timeouts, a streamed body-size cap, bounded redirects;
- retries with backoff on connection errors, 429 and 5xx, honouring Retry-After;
- at most `per_host_concurrency` requests in flight to one host from this process (download
  threads share one fetcher), so a library's server is never hammered.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

if TYPE_CHECKING:
    from model.settings import FetchSettings

RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AddressPolicy:
    """Public addresses pass; private/loopback/link-local/... only when allow-listed."""

    allow_hosts: set[str] = field(default_factory=set)
    allow_networks: list[IPNetwork] = field(default_factory=list)

    @classmethod
    def from_list(cls, entries: Iterable[str]) -> AddressPolicy:
        policy = cls()
        for entry in entries:
            try:
                policy.allow_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                policy.allow_hosts.add(entry.lower())
        return policy

    def host_allowed(self, host: str) -> bool:
        return host.lower() in self.allow_hosts

    def address_allowed(self, address: str) -> bool:
        ip: IPAddress = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return True
        return ip.is_global and not ip.is_multicast


def _guarded_classes(policy: AddressPolicy) -> dict[str, type]:
    """Connection pools whose sockets refuse a peer address the policy does not allow."""

    def check(conn: HTTPConnection, sock: socket.socket) -> socket.socket:
        peer = sock.getpeername()[0]
        if not (policy.host_allowed(conn.host) or policy.address_allowed(peer)):
            sock.close()
            raise FetchError("blocked_address", f"{conn.host} resolves to a non-public address")
        return sock

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return check(self, super()._new_conn())

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return check(self, super()._new_conn())

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
    ) -> None:
        self.policy = AddressPolicy.from_list(allow)
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.per_host_concurrency = max(1, per_host_concurrency)
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies from the environment
        self.session.max_redirects = max_redirects
        self.session.headers["User-Agent"] = user_agent
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
        )

    def check_url(self, url: str) -> None:
        """Early, friendly refusal of URLs that can never be fetched (the socket check is final)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError("bad_scheme", f"only http and https URLs are allowed, not {url!r}")
        if not parts.hostname:
            raise FetchError("bad_url", f"URL has no host: {url!r}")
        if self.policy.host_allowed(parts.hostname):
            return
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError("dns_error", f"cannot resolve {parts.hostname}") from exc
        if not all(self.policy.address_allowed(info[4][0]) for info in infos):
            raise FetchError(
                "blocked_address", f"{parts.hostname} resolves to a non-public address"
            )

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port or ''}"
        with self._slots_lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = self._host_slots[host] = threading.BoundedSemaphore(
                    self.per_host_concurrency
                )
            return slot

    def get(self, url: str, max_bytes: int | None = None) -> FetchResult:
        """Fetch `url`; `max_bytes` lowers the body cap (manifests and info.json are small)."""
        self.check_url(url)
        cap = min(max_bytes, self.max_bytes) if max_bytes else self.max_bytes
        slot = self._host_slot(url)
        attempt = 0
        while True:
            attempt += 1
            try:
                with slot:  # not held while sleeping before a retry
                    return self._get_once(url, attempt, cap)
            except _Retryable as exc:
                if attempt > self.retries:
                    raise exc.error from None
                backoff = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(exc.wait_s if exc.wait_s is not None else backoff)

    def _get_once(self, url: str, attempt: int, max_bytes: int) -> FetchResult:
        try:
            with self.session.get(url, timeout=self.timeout, stream=True) as resp:
                if resp.status_code in RETRY_STATUSES:
                    raise _Retryable(
                        FetchError("http_error", f"HTTP {resp.status_code} from {resp.url}"),
                        _retry_after(resp.headers.get("Retry-After")),
                    )
                if resp.status_code >= 400:
                    raise FetchError("http_error", f"HTTP {resp.status_code} from {resp.url}")
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
        except requests.exceptions.Timeout as exc:
            raise _Retryable(FetchError("timeout", f"timed out fetching {url}"), None) from exc
        except requests.exceptions.ConnectionError as exc:
            cause = _find_fetch_error(exc)
            if cause is not None:
                raise cause from None
            error = FetchError("connection_error", f"cannot connect: {url}")
            raise _Retryable(error, None) from exc
        except requests.exceptions.RequestException as exc:
            raise FetchError("fetch_error", f"cannot fetch {url}: {exc}") from exc

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


class _Retryable(Exception):
    def __init__(self, error: FetchError, wait_s: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.wait_s = wait_s


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    return None


def _find_fetch_error(exc: BaseException) -> FetchError | None:
    """The guard's FetchError, wherever urllib3/requests wrapped it."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, FetchError):
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

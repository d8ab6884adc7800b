"""The HTTP side of the client: one `requests` session, the key, retries with backoff.

Retried: connection errors and 502/503/504 for requests that are safe to repeat (GET, DELETE, and
POST /task, which always carries an `Idempotency-Key`: the same on every attempt, so a submit
whose answer was lost returns the task its first attempt created instead of a second one);
429 for any request (it was refused, not done), after its `Retry-After`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from client.errors import ClientError, Exit

DEFAULT_URL = "http://127.0.0.1:5005"
USER_AGENT = "scriptorium-client/1"
RETRY_STATUSES = frozenset({502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
# Seconds: first backoff (doubled each attempt, with jitter), longest backoff, longest
# Retry-After honoured (a server asking for more is treated as unavailable).
BACKOFF_S = 0.5
BACKOFF_MAX_S = 10.0
RETRY_AFTER_MAX_S = 120.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


def new_idempotency_key() -> str:
    return f"cli-{uuid.uuid4().hex}"


def retry_after_s(response: requests.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None if absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_of(response: requests.Response) -> tuple[str | None, str]:
    """(code, message) of an API error body `{"error": {"code", "message"}}`, else the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return error.get("code"), str(error.get("message") or error.get("code") or "")
    text = response.text.strip().splitlines()
    return None, (text[0][:200] if text else response.reason or "")


def raise_for(response: requests.Response) -> None:
    """A ClientError with the exit code an error status means; nothing for 2xx."""
    status = response.status_code
    if status < 400:
        return
    code, message = error_of(response)
    what = f"HTTP {status}" + (f" {code}" if code else "")
    if status in (401, 403) or code == "too_many_failed_authentications":
        exit_code = Exit.AUTH
    elif status in (404, 410):
        exit_code = Exit.NOT_FOUND
    elif status == 429 or status >= 500:
        exit_code = Exit.UNAVAILABLE
    else:
        exit_code = Exit.USAGE
    raise ClientError(exit_code, f"{what}: {message}", status=status, code=code)


class Client:
    """The API at `base_url` with one key. `notice` gets a line for each retry (stderr)."""

    def __init__(
        self,
        base_url: str,
        key: str | None,
        *,
        retries: int = 5,
        notice: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, retries)
        self.notice = notice or (lambda _line: None)
        self.sleep = sleep
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        if key:
            self.session.headers["X-API-Key"] = key

    # --- the retry loop ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        files: Callable[[], list[tuple[str, Any]]] | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send, retrying what is safe to retry; the last response (any status) is returned.

        `files` builds the multipart parts afresh for each attempt (files reopened).
        Connection errors that outlast the retries raise ClientError(UNAVAILABLE).
        """
        method = method.upper()
        repeatable = method in SAFE_METHODS or idempotency_key is not None
        headers = dict(kwargs.pop("headers", None) or {})
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        url = self.base_url + path
        attempt = 0
        while True:
            opened: list[Any] = []
            try:
                if files is not None:
                    parts = files()
                    opened = [part[1][1] for part in parts if hasattr(part[1][1], "close")]
                    kwargs["files"] = parts
                response = self.session.request(method, url, headers=headers, **kwargs)
            except requests.RequestException as exc:
                if not repeatable or attempt >= self.retries or not _transient(exc):
                    raise ClientError(
                        Exit.UNAVAILABLE, f"cannot reach {self.base_url}: {_reason(exc)}"
                    ) from exc
                delay = self._backoff(attempt)
                self.notice(f"{_reason(exc)}; retrying in {delay:.1f} s")
            else:
                delay = self._retry_delay(response, attempt, repeatable)
                if delay is None:
                    return response
                self.notice(f"HTTP {response.status_code}; retrying in {delay:.1f} s")
                response.close()
            finally:
                for handle in opened:
                    handle.close()
            self.sleep(delay)
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt)
        return delay * random.uniform(0.75, 1.25)

    def _retry_delay(
        self, response: requests.Response, attempt: int, repeatable: bool
    ) -> float | None:
        """Seconds to wait before retrying this response, None to return it as it is."""
        status = response.status_code
        if attempt >= self.retries:
            return None
        if status == 429:
            if error_of(response)[0] == "too_many_failed_authentications":
                return None  # a valid key never gets this one: waiting will not help
        elif not (status in RETRY_STATUSES and repeatable):
            return None
        hint = retry_after_s(response)
        if hint is None:
            return self._backoff(attempt)
        if hint > RETRY_AFTER_MAX_S:
            return None  # not worth waiting for here: reported as unavailable
        # A 429 names its own wait; a 5xx's Retry-After is a floor under the backoff.
        return hint if status == 429 else max(hint, self._backoff(attempt))

    # --- the API -------------------------------------------------------------------------

    def get_json(self, path: str, **kwargs: Any) -> tuple[requests.Response, Any]:
        response = self.request("GET", path, **kwargs)
        raise_for(response)
        return response, _json(response)

    def submit(
        self,
        *,
        idempotency_key: str,
        json_body: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
        files: Callable[[], list[tuple[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        key = idempotency_key
        if json_body is not None:
            response = self.request("POST", "/task", json=json_body, idempotency_key=key)
        else:
            response = self.request("POST", "/task", data=form, files=files, idempotency_key=key)
        raise_for(response)
        return _json(response)

    def status(self, task_id: str) -> tuple[dict[str, Any], float | None]:
        """The task's status document, and the server's Retry-After (while it is active)."""
        response, body = self.get_json(f"/status/{_quote(task_id)}")
        return body, retry_after_s(response)

    def cancel(self, task_id: str) -> tuple[int, dict[str, Any]]:
        response = self.request("DELETE", f"/terminate/{_quote(task_id)}")
        raise_for(response)
        return response.status_code, _json(response)

    def result(self, task_id: str, fmt: str, manifest: int | None = None) -> requests.Response:
        """The result (200), or the 202 of a task still running."""
        params: dict[str, Any] = {"format": fmt}
        if manifest is not None:
            params["manifest"] = manifest
        response = self.request("GET", f"/result/{_quote(task_id)}", params=params)
        if response.status_code == 409 and error_of(response)[0] == "no_result":
            raise ClientError(Exit.FAILED, error_of(response)[1], status=409, code="no_result")
        raise_for(response)
        return response

    def tasks(
        self, state: str | None, offset: int, limit: int, all_keys: bool = False
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            params["state"] = state
        if all_keys:
            params["scope"] = "all"
        return self.get_json("/tasks", params=params)[1]

    def openapi(self) -> dict[str, Any]:
        return self.get_json("/openapi/openapi.json")[1]


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ClientError(
            Exit.UNAVAILABLE,
            f"HTTP {response.status_code} with a body that is not JSON (is {response.url} "
            "a Scriptorium server?)",
            status=response.status_code,
        ) from exc


def _quote(task_id: str) -> str:
    from urllib.parse import quote

    return quote(task_id, safe="")


def _transient(exc: requests.RequestException) -> bool:
    """Errors of the connection, not of the request (a bad URL is not worth retrying)."""
    return isinstance(
        exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
    )


def _reason(exc: BaseException) -> str:
    """The innermost useful cause: 'Connection refused', 'Remote end closed connection...'."""
    text = str(exc)
    seen = exc
    while seen.__context__ is not None and seen.__context__ is not seen:
        seen = seen.__context__
    inner = str(seen)
    for candidate in (inner, text):
        if "refused" in candidate.lower():
            return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if "Remote end closed" in text or "RemoteDisconnected" in text:
        return "the connection was closed before an answer"
    if "reset" in text.lower():
        return "connection reset"
    return text[:200]

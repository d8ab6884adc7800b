"""The shape of a URL a task may name, checked at submit (what the worker may reach is the
fetcher's business, at fetch time). One pattern serves both the check and the OpenAPI document,
so the document promises exactly what the API accepts."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_SHOWN = 200  # characters of a refused URL quoted back
_PORT = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
)
# http(s), a host name or IPv4 address (IDNs in punycode; no user:password@), an optional port
# in 0-65535, then anything but spaces and control characters (spelled out: regex engines
# disagree on what \s is).
HTTP_URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~-]+(?::{_PORT})?(?:[/?#][^\x00-\x20\x7f]*)?$"
)
_HTTP_URL = re.compile(HTTP_URL_PATTERN)


def check_http_url(url: str, what: str = "") -> None:
    """Raise ValueError, saying what is wrong, unless `url` matches HTTP_URL_PATTERN."""
    if not _HTTP_URL.fullmatch(url):
        prefix = f"{what}: " if what else ""
        raise ValueError(f"{prefix}{_problem(url)}: {url[:MAX_SHOWN]!r}")


def _problem(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks the range
    except ValueError:
        return "invalid port in URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    return "not a usable http(s) URL (an ASCII host name, no credentials, no spaces)"


def url_list_schema() -> dict:
    """JSON-schema extras of a list of such URLs (for pydantic's json_schema_extra)."""
    return {"items": {"type": "string", "pattern": HTTP_URL_PATTERN}}

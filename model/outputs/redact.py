"""What a share link shows of a result: the key holder's view less what only they should see.

Source URLs can carry credentials in their query (`?sig=`, `?token=`, signed S3/CDN links) or
user info (`https://user:pass@host/`): a shared result keeps each URL's scheme, host and path
and says REDACTED for the rest. The worker's host name, process id and library versions are
operational detail for the service's operator, not for whoever holds a link.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"
# Provenance keys that describe the worker rather than the result.
WORKER_KEYS = frozenset(
    {"worker", "worker_pid", "worker_host", "host", "pid", "versions", "model_loads_in_process"}
)


def redact_url(value: str, own_base: str = "") -> str:
    """`value` with its query and user info REDACTED, if it is an http(s) URL that is not one of
    this service's own (under `own_base`: those carry the share token the link already shows)."""
    if not value.startswith(("http://", "https://")) or (own_base and value.startswith(own_base)):
        return value
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    if ":" in host:  # an IPv6 literal goes back in brackets
        host = f"[{host}]"
    if not (parts.query or "@" in parts.netloc):
        return value
    netloc = (f"{REDACTED}@" if "@" in parts.netloc else "") + host + port
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def shared_view(value: Any, own_base: str = "") -> Any:
    """A copy of a result document (or part of one) fit for a share link: every URL but the
    service's own (under `own_base`, e.g. a cluster's prototype links) redacted, the worker's
    identity and versions left out."""
    if isinstance(value, dict):
        return {k: shared_view(v, own_base) for k, v in value.items() if k not in WORKER_KEYS}
    if isinstance(value, list):
        return [shared_view(v, own_base) for v in value]
    if isinstance(value, str):
        return redact_url(value, own_base)
    return value

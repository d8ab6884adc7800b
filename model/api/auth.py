"""API-key authentication: `X-API-Key: <key>` or `Authorization: Bearer <key>`."""

from __future__ import annotations

from flask import g, request

from model.api import auth_failures
from model.api.errors import ApiError
from model.api.services import services
from model.keys import ApiKey

SECURITY = [{"ApiKey": []}, {"Bearer": []}]
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}


def presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def lookup_presented_key() -> ApiKey | None:
    """The active key the request presents, read once per request (the rate limiter and the
    auth hook both need it) through the process's key cache: a key revoked or rotated is
    refused from at most `KEY_CACHE_TTL_S` (0.5 s) after the change on."""
    if "key_lookup" not in g:
        key = presented_key()
        g.key_lookup = services().key_cache.lookup(key) if key else None
    return g.key_lookup


def refuse(message: str) -> ApiError:
    """401, or 429 once failed authentications are over their budget."""
    wait_s = auth_failures.retry_after(request.remote_addr or "-")
    if wait_s is not None:
        return ApiError(
            429,
            "too_many_failed_authentications",
            "too many requests with a missing or invalid API key; retry later",
            {"Retry-After": str(wait_s)},
        )
    return ApiError(
        401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="scriptorium"'}
    )


def require_key() -> None:
    """before_request hook of authenticated blueprints: sets g.owner or answers 401."""
    key = presented_key()
    if not key:
        raise refuse("missing API key: send X-API-Key or Bearer token")
    api_key = lookup_presented_key()
    if api_key is None:
        raise refuse("invalid or revoked API key")
    g.api_key = api_key
    g.owner = api_key.name


def is_admin() -> bool:
    return bool(getattr(g.get("api_key"), "admin", False))

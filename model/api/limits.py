"""Per-key request rate limits (flask-limiter, counted in Redis)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from flask_limiter import Limiter, RequestLimit

from model.api.auth import lookup_presented_key, presented_key
from model.api.auth_failures import init_auth_failures
from model.api.errors import error_response
from model.api.services import services
from model.keys import hash_key
from model.settings import Settings


def _limit_key() -> str:
    """Count per API key (hashed: no secret in Redis)."""
    key = presented_key()
    return f"key:{hash_key(key)[:32]}" if key else f"addr:{request.remote_addr}"


def _rate_for_caller() -> str:
    """A key's own rate when it was created with one, else the configured default."""
    if "rate_limit" not in g:
        api_key = lookup_presented_key()
        g.rate_limit = (api_key.rate_limit if api_key else None) or services().settings.limits.rate
    return g.rate_limit


def _too_many_requests(limit: RequestLimit) -> Response:
    """The 429 of a breached limit: our JSON error, Retry-After and the X-RateLimit-* headers."""
    reset_at = limit.reset_at  # reads the window from Redis: only on a breach
    return error_response(
        429,
        "too_many_requests",
        f"rate limit exceeded ({limit.limit}); retry later",
        {
            "Retry-After": str(max(0, int(reset_at - time.time()))),
            "X-RateLimit-Limit": str(limit.limit.amount),
            "X-RateLimit-Remaining": str(limit.remaining),
            "X-RateLimit-Reset": str(reset_at),
        },
    )


def init_limits(app: Flask, settings: Settings, exempt: list) -> Limiter:
    limiter = Limiter(
        key_func=_limit_key,
        app=app,
        # One budget per key for the whole API, not one per route (a key at 5/s could
        # otherwise make 5/s on each endpoint).
        application_limits=[_rate_for_caller],
        # Anonymous requests: nginx sheds floods of them (limit_req) before they get here, and
        # a keyed route refuses them with the failed-authentication budget. Counting them here
        # would put every client behind the tunnel (one address) in one bucket.
        application_limits_exempt_when=lambda: presented_key() is None,
        storage_uri=settings.redis_url(),
        storage_options={"socket_timeout": 2},
        # Rate headers only on a 429 (on_breach): on every response they cost two more Redis
        # round trips per request, a third of what GET /status costs (bench/README.md).
        headers_enabled=False,
        on_breach=_too_many_requests,
        swallow_errors=True,  # limits fail open if Redis is briefly away, requests go on
        key_prefix="sc:limits",
    )
    for blueprint in exempt:
        limiter.exempt(blueprint)
    init_auth_failures(app, limiter, settings.limits.auth_failures)
    return limiter

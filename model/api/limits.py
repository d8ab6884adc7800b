"""Per-key request rate limits (flask-limiter, counted in Redis)."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit
from limits import parse_many

from model.api.auth import lookup_presented_key, presented_key
from model.api.auth_failures import init_auth_failures
from model.api.errors import ApiError, error_response
from model.api.services import services
from model.keys import hash_key
from model.settings import Settings, ShareSettings

log = logging.getLogger("scriptorium.api")
LIMITER = "scriptorium.limiter"


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
    app.extensions[LIMITER] = limiter
    for blueprint in exempt:
        limiter.exempt(blueprint)
    init_auth_failures(app, limiter, settings.limits.auth_failures)
    return limiter


def limit_share_read(share: ShareSettings, share_id: str) -> None:
    """Count a read through a share link against its link's budget and its client's
    (`share.rate`, `share.client_rate`): 429 beyond either. Such reads present no key, or
    any header at all, so the per-key limit cannot be what holds them back."""
    limiter: Limiter = current_app.extensions[LIMITER]
    budgets = (
        (share.rate, "share", share_id),
        (share.client_rate, "share-client", request.remote_addr or "-"),
    )
    for rate, scope, who in budgets:
        for item in parse_many(rate):
            try:
                strategy = limiter.limiter
                allowed = strategy.hit(item, scope, who)
                reset_at = None if allowed else strategy.get_window_stats(item, scope, who)[0]
            except Exception:  # as the limiter does (swallow_errors): Redis away, reads go on
                log.warning("share read limit not counted", exc_info=True)
                return
            if reset_at is not None:
                raise ApiError(
                    429,
                    "too_many_requests",
                    f"too many reads through share links ({item}, per {scope.replace('-', ' ')})"
                    "; retry later",
                    {"Retry-After": str(max(1, int(reset_at - time.time())))},
                )

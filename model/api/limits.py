"""Per-key request rate limits (flask-limiter, counted in Redis) and CORS (flask-cors)."""

from __future__ import annotations

from flask import Flask, g, request
from flask_cors import CORS
from flask_limiter import Limiter

from model.api.auth import presented_key
from model.api.services import services
from model.keys import hash_key
from model.settings import Settings


def _limit_key() -> str:
    """Count per API key (hashed: no secret in Redis); anonymous callers per address."""
    key = presented_key()
    return f"key:{hash_key(key)[:32]}" if key else f"addr:{request.remote_addr}"


def _rate_for_caller() -> str:
    """A key's own rate when it was created with one, else the configured default."""
    if "rate_limit" not in g:
        key = presented_key()
        api_key = services().keys.lookup(key) if key else None
        g.rate_limit = (api_key.rate_limit if api_key else None) or services().settings.limits.rate
    return g.rate_limit


def init_limits(app: Flask, settings: Settings, exempt: list) -> Limiter:
    limiter = Limiter(
        key_func=_limit_key,
        app=app,
        default_limits=[_rate_for_caller],
        storage_uri=settings.redis_url(),
        storage_options={"socket_timeout": 2},
        headers_enabled=True,  # X-RateLimit-* and Retry-After on a 429
        swallow_errors=True,  # limits fail open if Redis is briefly away, requests go on
        key_prefix="sc:limits",
    )
    for blueprint in exempt:
        limiter.exempt(blueprint)
    if settings.cors.origins:
        CORS(
            app,
            origins=settings.cors.origins,
            expose_headers=["Location", "Retry-After", "X-Request-Id"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
        )
    return limiter

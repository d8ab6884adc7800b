"""Per-key request rate limits, counted in Redis by the `limits` library.

One `before_request` hook does what flask-limiter's application limits did (the same Redis
keys, limits, exemptions and 429), without its per-request machinery: resolving exemptions,
limit lists and callables for every request cost ~0.3 ms of CPU, a sixth of a `GET /status`
(bench/README.md, "Where a status call's time goes"). What is left per keyed request: one
lookup of the key's rate (cached), one hash, one counter script in Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, RateLimiter
from redis.exceptions import NoScriptError

from model.api.auth import lookup_presented_key, presented_key
from model.api.auth_failures import init_auth_failures
from model.api.errors import ApiError, error_response
from model.api.services import services
from model.keys import hash_key
from model.keyspace import RATE_LIMITS_NAMESPACE
from model.settings import Settings, ShareSettings

log = logging.getLogger("scriptorium.api")
LIMITER = "scriptorium.limiter"
# Redis keys: LIMITS:LIMITER/sc:limits/key:<hash>/global/<rate> (as flask-limiter named them,
# so counts carry over an upgrade).
SCOPE = "global"
DEFERRED = "rate_count_deferred"  # g: (limit, key) the view counts in its own round trip


@lru_cache(maxsize=256)
def _items(rate: str) -> tuple[RateLimitItem, ...]:
    """A rate string's limits, shortest window first (checked in that order)."""
    return tuple(sorted(parse_many(rate)))


def _rate_for_caller() -> str:
    """A key's own rate when it was created with one, else the configured default."""
    api_key = lookup_presented_key()
    return (api_key.rate_limit if api_key else None) or services().settings.limits.rate


def _too_many_requests(item: RateLimitItem, reset_at: float, remaining: int) -> Response:
    """The 429 of a breached limit: our JSON error, Retry-After and the X-RateLimit-* headers."""
    reset = int(reset_at + 1)
    return error_response(
        429,
        "too_many_requests",
        f"rate limit exceeded ({item}); retry later",
        {
            "Retry-After": str(max(0, int(reset - time.time()))),
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        },
    )


class KeyRateLimit:
    """One budget per key for the whole API, not one per route (a key at 5/s could otherwise
    make 5/s on each endpoint). Requests with no key are not counted: nginx sheds floods of
    them (limit_req) and a keyed route refuses them with the failed-authentication budget;
    counting them here would put every client behind the tunnel (one address) in one bucket."""

    def __init__(
        self, strategy: RateLimiter, exempt_blueprints: set[str], deferred: set[str]
    ) -> None:
        self.strategy = strategy
        self._exempt = exempt_blueprints
        self._deferred = deferred  # endpoints whose view counts the request (queue_count)

    def check(self) -> Response | None:
        """before_request hook: None, or the 429 that answers instead of the view."""
        endpoint = request.endpoint
        if (
            not endpoint  # no route (404, 405): nothing to count
            or endpoint.rpartition(".")[2] == "static"
            or request.blueprint in self._exempt
        ):
            return None
        key = presented_key()
        if key is None:
            return None
        who = f"key:{hash_key(key)[:32]}"  # hashed: no secret in Redis
        try:
            items = _items(_rate_for_caller())
            # Only a valid key's single limit: an unknown key never reaches the view, and of
            # several limits the longer ones are not counted once a shorter one is over.
            if endpoint in self._deferred and len(items) == 1 and lookup_presented_key():
                g.setdefault(DEFERRED, (items[0], who))
                return None
            for item in items:
                if not self.strategy.hit(item, RATE_LIMITS_NAMESPACE, who, SCOPE):
                    return self._refuse(item, who)
        except Exception:  # fail open while Redis is briefly away: requests go on
            log.exception("Failed to rate limit. Swallowing error")
        return None

    def _refuse(self, item: RateLimitItem, who: str) -> Response:
        reset_at, remaining = self.strategy.get_window_stats(
            item, RATE_LIMITS_NAMESPACE, who, SCOPE
        )
        log.info("ratelimit %s (%s) exceeded at endpoint: %s", item, who, request.endpoint)
        return _too_many_requests(item, reset_at, remaining)

    def queue_count(self, pipe: Any) -> Callable[[list], None]:
        """Queue this request's deferred count on `pipe` (a pipeline of the limits' Redis),
        if the hook left it to the view. Returns `settle(replies)`: given the pipeline's
        replies (the count's first), raises the 429 once over the limit. EVALSHA, not the
        registered script: a pipeline of those first asks Redis whether they exist; a Redis
        that lost its scripts answers NOSCRIPT (nothing counted), then the count goes alone."""
        deferred = g.pop(DEFERRED, None)
        if deferred is None:
            return lambda replies: None
        item, who = deferred
        storage = self.strategy.storage
        assert isinstance(storage, RedisStorage)
        name = item.key_for(RATE_LIMITS_NAMESPACE, who, SCOPE)
        expiry = item.get_expiry()
        pipe.evalsha(storage.lua_incr_expire.sha, 1, storage.prefixed_key(name), expiry, 1)

        def settle(replies: list) -> None:
            count = replies[0]
            if isinstance(count, NoScriptError):
                count = storage.incr(name, expiry)
            if isinstance(count, Exception):
                log.error("Failed to rate limit. Swallowing error: %s", count)
            elif int(count) > item.amount:
                raise _Refused(self._refuse(item, who))

        return settle

    def count_if_deferred(self, response: Response) -> Response:
        """after_request: count a request the view did not (refused before it ran)."""
        deferred = g.pop(DEFERRED, None)
        if deferred is None:
            return response
        item, who = deferred
        try:
            if not self.strategy.hit(item, RATE_LIMITS_NAMESPACE, who, SCOPE):
                return self._refuse(item, who)
        except Exception:
            log.exception("Failed to rate limit. Swallowing error")
        return response


class _Refused(Exception):
    """A 429 found in a view's round trip (answered by init_limits' error handler)."""

    def __init__(self, response: Response) -> None:
        super().__init__("rate limit exceeded")
        self.response = response


def queue_count(pipe: Any) -> Callable[[list], None]:
    """The current app's `KeyRateLimit.queue_count`."""
    limiter: KeyRateLimit = current_app.extensions[LIMITER]
    return limiter.queue_count(pipe)


def init_limits(
    app: Flask, settings: Settings, exempt: list, deferred: tuple[str, ...] = ()
) -> KeyRateLimit:
    """`deferred`: endpoints whose view counts the request itself (`queue_count`)."""
    storage = storage_from_string(settings.redis_url(), socket_timeout=2)
    limiter = KeyRateLimit(
        FixedWindowRateLimiter(storage), {bp.name for bp in exempt}, set(deferred)
    )
    app.extensions[LIMITER] = limiter
    app.before_request(limiter.check)
    app.after_request(limiter.count_if_deferred)
    app.register_error_handler(_Refused, lambda exc: exc.response)
    init_auth_failures(app, limiter.strategy, settings.limits.auth_failures)
    return limiter


def limit_share_read(share: ShareSettings, share_id: str) -> None:
    """Count a read through a share link against its link's budget and its client's
    (`share.rate`, `share.client_rate`): 429 beyond either. Such reads present no key, or
    any header at all, so the per-key limit cannot be what holds them back."""
    strategy = current_app.extensions[LIMITER].strategy
    budgets = (
        (share.rate, "share", share_id),
        (share.client_rate, "share-client", request.remote_addr or "-"),
    )
    for rate, scope, who in budgets:
        for item in parse_many(rate):
            try:
                allowed = strategy.hit(item, scope, who)
                reset_at = None if allowed else strategy.get_window_stats(item, scope, who)[0]
            except Exception:  # as the per-key limit does: Redis away, reads go on
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

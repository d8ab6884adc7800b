"""A budget for failed authentications: guessing keys, or a client with a broken key hammering
the API, gets 429 once over `limits.auth_failures` instead of an endless stream of 401s.

Counted per client address with the rate limiter's own storage (Redis). Behind nginx and the
spiped tunnel every client has the same address, so this is one shared budget for all failed
attempts; callers with a valid key never touch it.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, current_app
from limits import parse_many
from limits.strategies import RateLimiter

from model.keyspace import AUTH_FAILURES_NAMESPACE

log = logging.getLogger(__name__)
EXTENSION = "scriptorium.auth_failures"
# Limiter keys: LIMITS:LIMITER/sc:auth-failures/<client>/<rate>.


class AuthFailures:
    def __init__(self, strategy: RateLimiter, rates: str) -> None:
        self._strategy = strategy
        self._items = parse_many(rates)

    def retry_after(self, client: str) -> int | None:
        """Count one failure of `client`; seconds to wait when over budget, else None."""
        try:
            strategy = self._strategy
            for item in self._items:
                if not strategy.hit(item, AUTH_FAILURES_NAMESPACE, client):
                    reset_at, _ = strategy.get_window_stats(item, AUTH_FAILURES_NAMESPACE, client)
                    return max(1, int(reset_at - time.time()))
        except Exception:  # like the request limits: fail open while Redis is away
            log.warning("auth-failure budget unavailable", exc_info=True)
        return None


def init_auth_failures(app: Flask, strategy: RateLimiter, rates: str) -> None:
    app.extensions[EXTENSION] = AuthFailures(strategy, rates)


def retry_after(client: str) -> int | None:
    budget: AuthFailures | None = current_app.extensions.get(EXTENSION)
    return budget.retry_after(client) if budget else None

"""One delivery attempt of a webhook message (the webhooks worker only: it makes the request).

The request goes through `SafeFetcher.post`: the same SSRF guard as image fetching (every
address the host resolves to must be public or allow-listed in `fetch.allow`, checked before
connecting), the fetch timeouts capped by `webhooks.timeout_s`, never a redirect followed, the
answer's body never read. A 2xx answer is a delivery; anything else is retried with exponential
backoff until the message's time is up (`completed` events) — except a refused address, which is
never retried, and `progress` events, which are sent once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from model.keys import KeyStore
from model.settings import Settings
from model.sources.fetch import FetchError, SafeFetcher
from model.tasks.store import TaskStore
from model.webhooks import signing
from model.webhooks.events import PROGRESS, Message, Outbox

# Not worth retrying: the URL cannot be delivered to, whatever the receiver does.
REFUSED_CODES = {"blocked_address", "bad_scheme", "bad_url"}
# No answer from the receiver host (for its breaker): down, unreachable or hanging.
ANSWERLESS_CODES = {"timeout", "connect_timeout", "connection_error", "dns_error", "fetch_error"}
JITTER = 0.1  # each backoff is lengthened by up to this fraction (receivers are not stampeded)


def webhook_fetcher(settings: Settings) -> SafeFetcher:
    """Image fetching's fetcher and guard, with every timeout within `webhooks.timeout_s`."""
    fetch, most = settings.fetch, settings.webhooks.timeout_s
    return SafeFetcher(
        allow=fetch.allow,
        connect_timeout_s=min(fetch.connect_timeout_s, most),
        read_timeout_s=min(fetch.read_timeout_s, most),
        response_deadline_s=min(fetch.response_deadline_s, most),
        user_agent=fetch.user_agent,
        retries=0,
    )


def backoff_s(settings: Settings, attempt: int) -> float:
    """Wait after failed attempt number `attempt` (1, 2, ...): doubling, capped, jittered."""
    hooks = settings.webhooks
    base = min(hooks.backoff_max_s, hooks.backoff_initial_s * 2 ** (attempt - 1))
    return base * (1 + random.uniform(0, JITTER))


def _host_outcome(status: int | None, error: tuple[str, str] | None) -> str:
    """What an attempt says of its receiver host, for its breaker: `failed` (no answer, 429 or
    5xx: the host is down or overloaded), `ok` (any other answer: it is up), or `other` (nothing
    was sent: a refused address, no secret)."""
    if status is not None:
        return "failed" if status == 429 or status >= 500 else "ok"
    if error is None:
        return "ok"
    return "failed" if error[0] in ANSWERLESS_CODES else "other"


def _iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC).isoformat()


@dataclass
class Deliverer:
    outbox: Outbox
    store: TaskStore
    keys: KeyStore
    fetcher: SafeFetcher
    settings: Settings
    meter: Any = None  # model.metrics.record.Meter (deliveries by outcome)

    def deliver(self, msg_id: str, attempt: int) -> dict[str, Any] | None:
        """Attempt `attempt` of the message, if it is still the one due; the attempt's log
        entry (None: nothing to do, e.g. a duplicate of an attempt already made)."""
        now = time.time()
        message = self.outbox.claim(msg_id, attempt, now)
        if message is None:
            return None
        started = time.perf_counter()
        status, error = self._send(message)
        duration = time.perf_counter() - started
        self.outbox.host_answered(message.host, _host_outcome(status, error), time.time())
        next_at = None
        if error is None:
            outcome = "delivered"
        elif error[0] == "task_ended":
            outcome = "skipped"
        elif error[0] in REFUSED_CODES:
            outcome = "refused"
        elif message.event == PROGRESS:
            outcome = "failed"  # sent once: the next event supersedes it
        else:
            next_at = time.time() + backoff_s(self.settings, attempt)
            outcome = "failed" if next_at <= message.retry_until else "gave_up"
            next_at = next_at if outcome == "failed" else None
        self.outbox.settle(message, outcome if next_at is None else "pending", next_at)
        entry = {
            "event": message.event,
            "webhook_id": message.id,
            "attempt": attempt,
            "at": _iso(now),
            "status_code": status,
            "outcome": outcome,
            "error": None if error is None else {"code": error[0], "message": error[1]},
            "duration_s": round(duration, 3),
            "next_retry_at": _iso(next_at),
        }
        self.outbox.log_attempt(message.task_id, entry)
        if self.meter is not None:
            self.meter.webhook_attempt(message.event, outcome, duration)
        return entry

    def _send(self, message: Message) -> tuple[int | None, tuple[str, str] | None]:
        if message.event == PROGRESS:
            record = self.store.get(message.task_id)
            if record is None or record.state.terminal:
                return None, ("task_ended", "the task ended before this progress event was sent")
        secrets = self.keys.signing_secrets(message.owner, self.settings.webhooks.rotation_grace_s)
        if not secrets:
            return None, (
                "no_secret",
                f"the key {message.owner!r} has no webhook secret "
                "(python -m model keys webhook-secret NAME)",
            )
        headers = signing.headers(secrets, message.id, int(time.time()), message.body)
        try:
            status = self.fetcher.post(message.url, message.body, headers)
        except FetchError as exc:
            return None, (exc.code, exc.message)
        if 200 <= status < 300:
            return status, None
        note = " (redirects are not followed)" if 300 <= status < 400 else ""
        return status, ("http_status", f"the receiver answered HTTP {status}{note}")

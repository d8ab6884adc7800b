"""What POST /task checks before it queues anything: body shape limits, backpressure, retries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from flask import g, request

from model.api.errors import ApiError
from model.api.services import Services
from model.jobs.spec import JobSpec
from model.store import AlreadyClaimed

MAX_IDEMPOTENCY_KEY = 200
RETRY_AFTER_FULL_S = "10"


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: deep input cannot blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_json_depth(value: Any, limit: int) -> None:
    if json_depth(value) > limit:
        raise ApiError(400, "too_deep", f"JSON nesting deeper than {limit} levels")


def check_backpressure(svc: Services) -> None:
    """Refuse new work instead of letting the queue grow without bound."""
    limits = svc.settings.limits
    if svc.store.queued_count() >= limits.max_queued_total:
        raise ApiError(
            503,
            "queue_full",
            "the service has too many queued tasks; retry later",
            {"Retry-After": RETRY_AFTER_FULL_S},
        )
    per_key = (
        g.api_key.max_queued if g.api_key.max_queued is not None else limits.max_queued_per_key
    )
    if svc.store.queued_count(g.owner) >= per_key:
        raise ApiError(
            429,
            "too_many_queued",
            f"this key already has {per_key} queued tasks; wait for some to start",
            {"Retry-After": RETRY_AFTER_FULL_S},
        )


def check_active_per_key(svc: Services, job: JobSpec) -> None:
    """A job type with a per-key cap (training: each task holds a worker for minutes)."""
    if job.active_per_key is None:
        return
    most = job.active_per_key(svc.settings)
    if svc.store.active_count(g.owner, job.name) >= most:
        raise ApiError(
            429,
            "too_many_active",
            f"this key already has {most} {job.name} task(s) queued or running; wait for one "
            "to end",
            {"Retry-After": RETRY_AFTER_FULL_S},
        )


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable()):
        raise ApiError(
            400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} chars"
        )
    return key


def request_fingerprint(fields: dict[str, Any], files: Iterable[bytes]) -> str:
    """What a submit asks for (its validated fields and the bytes of its files): a retry with
    the same Idempotency-Key must ask for the same thing."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for data in files:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:32]


def _same_request(bound: tuple[str, str | None], fingerprint: str) -> str:
    task_id, earlier = bound
    if earlier is not None and earlier != fingerprint:
        # As Stripe and the IETF Idempotency-Key draft do: a reused key is an error, never
        # silently the first task.
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        )
    return task_id


def earlier_submit(svc: Services, fingerprint: str) -> str | None:
    """The task an earlier submit with the same Idempotency-Key created (checked first, so a
    retry is answered even when the queue has filled up since); 422 if it asked otherwise."""
    key = _idempotency_key()
    bound = svc.store.idempotent_task(g.owner, key) if key else None
    return _same_request(bound, fingerprint) if bound else None


def idempotency_claim(fingerprint: str) -> tuple[str, str] | None:
    """(Idempotency-Key, fingerprint) for the store to bind as it creates the task, if any."""
    key = _idempotency_key()
    return (key, fingerprint) if key else None


def claimed_by(claimed: AlreadyClaimed, fingerprint: str) -> str:
    """The task a concurrent submit with the same key created; 422 if it asked otherwise."""
    return _same_request((claimed.task_id, claimed.fingerprint), fingerprint)

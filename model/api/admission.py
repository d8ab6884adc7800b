"""What POST /task checks before it queues anything: body shape limits, backpressure, retries."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from flask import g, request

from model.api.errors import ApiError
from model.api.services import Services
from model.jobs.spec import JobSpec
from model.tasks.store import AlreadyClaimed

MAX_IDEMPOTENCY_KEY = 200
RETRY_AFTER_FULL_S = "10"


# A JSON string, escapes included (the unrolled form: no backtracking on long strings).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def raw_json_depth(raw: bytes | str) -> int:
    """Nesting depth of JSON text, read from its bytes without parsing it: strings (and the
    brackets inside them) left out, then a running count over the brackets, in C loops. A
    parsed 1 MB body of small objects takes ~50 MB; this takes a copy of the text at most.
    Malformed text gives a number too: parsing it afterwards still refuses it."""
    data = raw.encode() if isinstance(raw, str) else raw
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_json_depth(raw: bytes | str, limit: int) -> None:
    if raw_json_depth(raw) > limit:
        raise ApiError(400, "too_deep", f"JSON nesting deeper than {limit} levels")


def check_json_size(size: int | None, limit: int, what: str = "a JSON body") -> None:
    """413 before the bytes are read (and long before they are parsed)."""
    if size is not None and size > limit:
        raise ApiError(
            413,
            "body_too_large",
            f"{what} may be at most {limit} bytes (send images as multipart uploads)",
        )


def cap_json_body(limit: int) -> None:
    """before_request: a JSON body over `limit` bytes is refused from its Content-Length; one
    sent without a length (chunked) is read one byte past the limit at most (werkzeug cuts the
    stream there), and `read_json_body` refuses it."""
    if request.mimetype == "application/json" or request.mimetype.endswith("+json"):
        check_json_size(request.content_length, limit)
        request.max_content_length = limit + 1


def read_json_body(limit: int, max_depth: int) -> bytes:
    """The JSON body's bytes, once its size and depth are known to be within the limits."""
    raw = request.get_data(cache=True)
    check_json_size(len(raw), limit)
    check_json_depth(raw, max_depth)
    return raw


def check_backpressure(svc: Services) -> None:
    """Refuse new work instead of letting the queue grow without bound."""
    limits = svc.settings.limits
    total, own = svc.store.queued_counts(g.owner)  # one Redis round trip for both
    if total >= limits.max_queued_total:
        raise ApiError(
            503,
            "queue_full",
            "the service has too many queued tasks; retry later",
            {"Retry-After": RETRY_AFTER_FULL_S},
        )
    per_key = (
        g.api_key.max_queued if g.api_key.max_queued is not None else limits.max_queued_per_key
    )
    if own >= per_key:
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

"""Hooks for the schemathesis CLI run over the live stack (test_schema_fuzz.py): real images and
manifests in upload parts (fuzz_media), and the shared failed-authentication budget reset before
each call — the checks' requests with missing and wrong keys are what that budget counts, and
running out of it is not what this run tests (test_hardening_api.py does)."""

from __future__ import annotations

import os
from typing import Any

import redis
import schemathesis

from server.tests import fuzz_media  # noqa: F401 - registers the media types

REDIS_URL = os.environ.get("SCRIPTORIUM_FUZZ_REDIS_URL")
_client = redis.Redis.from_url(REDIS_URL) if REDIS_URL else None


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    if _client is not None:
        for name in _client.scan_iter("*sc:auth-failures*"):
            _client.delete(name)

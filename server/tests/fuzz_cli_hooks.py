"""Hooks for the schemathesis CLI run over the live stack (test_schema_fuzz.py): real images and
manifests in upload parts (fuzz_media), and the shared failed-authentication budget reset before
each call — the checks' requests with missing and wrong keys are what that budget counts, and
running out of it is not what this run tests (test_hardening_api.py does)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import redis
import schemathesis

from model.sources.addresses import AddressPolicy, literal_address
from server.tests import fuzz_media  # noqa: F401 - registers the media types

REDIS_URL = os.environ.get("SCRIPTORIUM_FUZZ_REDIS_URL")
_client = redis.Redis.from_url(REDIS_URL) if REDIS_URL else None


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    if _client is not None:
        for name in _client.scan_iter("*sc:auth-failures*"):
            _client.delete(name)
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    if mode == schemathesis.GenerationMode.POSITIVE:  # a negative case stays as generated
        fit_positive(getattr(case, "body", None))


def fit_positive(body: Any) -> None:
    """What no JSON schema can say, made true of a positive case's body, so the run tests the
    rest of it (each refusal is documented and tested on its own):
    - a webhook URL whose host spells an IP address that is not public (`HTTP://0`, `10.1`) is
      refused at submit (422 webhook_refused; test_webhooks.py): sent with a public host;
    - evaluate's and train's inline annotations must hold a box on a canvas (422 no_boxes;
      test_fast_evaluate.py), two canvases for train (422 too_few_pages; test_fast_training.py):
      left out, the manifest's own annotations are read instead."""
    if not isinstance(body, dict):
        return
    if body.get("type") in ("evaluate", "train") and isinstance(body.get("input"), dict):
        body["input"].pop("annotations", None)
    webhook = body.get("webhook")
    if isinstance(webhook, dict) and isinstance(webhook.get("url"), str):
        host = urlsplit(webhook["url"]).hostname or ""
        address = literal_address(host)
        if address is not None and not AddressPolicy.from_list([]).address_allowed(address):
            webhook["url"] = "https://hooks.example.org/scriptorium"

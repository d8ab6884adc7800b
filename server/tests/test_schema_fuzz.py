"""schemathesis against the live service's own OpenAPI document: generated requests, valid and
invalid, must never produce a 5xx, and every response must match what the document promises.

Driven through schemathesis' Python API with hypothesis (its pytest plugin does not support
pytest 9 yet); each operation and generation mode is its own test case.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as CHECK_REGISTRY
from schemathesis.checks import load_all_checks

from server.tests import fuzz_media  # noqa: F401 - registers real images and manifests
from testkit.stack import Stack

MAX_EXAMPLES = 20
OPERATIONS = [
    ("POST", "/task"),
    ("GET", "/status/{task_id}"),
    ("DELETE", "/terminate/{task_id}"),
    ("GET", "/tasks"),
    ("GET", "/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
# Every check schemathesis has (`--checks all`), response time apart: speed is for bench/.
load_all_checks()
CHECKS = [check for check in CHECK_REGISTRY.get_all() if check.__name__ != "max_response_time"]


@pytest.fixture(scope="session")
def fuzz_key(stack: Stack) -> str:
    key = stack.create_key("fuzzer", "--rate", "100000/second")
    # Valid requests may ask for a webhook, which needs the key's signing secret.
    assert stack.cli("keys", "webhook-secret", "fuzzer").returncode == 0
    return key


@pytest.fixture(scope="session")
def operations(stack: Stack) -> dict[tuple[str, str], Any]:
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi/openapi.json")
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[(operation.method.upper(), operation.path)] = operation
    return found


def test_document_covers_the_api(operations) -> None:
    assert set(OPERATIONS) <= set(operations)


# Probes take no input at all: there is nothing to make invalid.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (path in ("/healthz", "/readyz") and mode == GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_5xx_and_responses_match_schema(
    stack: Stack, operations, fuzz_key: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = operations[(method, path)]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        # The checks of missing and wrong keys send some: their budget is not what this tests.
        stack.reset_auth_failures()
        headers = {**(case.headers or {}), "X-API-Key": fuzz_key}
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()

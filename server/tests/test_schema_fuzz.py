"""schemathesis against the live service's own OpenAPI document: generated requests, valid and
invalid, must never produce a 5xx, and every response must match what the document promises.

Driven through schemathesis' Python API with hypothesis (its pytest plugin does not support
pytest 9 yet); each operation and generation mode is its own test case.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as CHECK_REGISTRY
from schemathesis.checks import load_all_checks

from server.tests import fuzz_media  # noqa: F401 - registers real images and manifests
from server.tests.fuzz_cli_hooks import fit_positive
from testkit.stack import PROJECT_ROOT, Stack

# Every test here fuzzes the session stack; marked as a whole, so that the fast layer does not
# even import the module (schemathesis and hypothesis: seconds of imports).
pytestmark = pytest.mark.live

MAX_EXAMPLES = 20
OPERATIONS = [
    ("POST", "/task"),
    ("GET", "/status/{task_id}"),
    ("DELETE", "/terminate/{task_id}"),
    ("GET", "/tasks"),
    ("GET", "/models"),
    ("GET", "/jobs"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
# Every check schemathesis has (`--checks all`), but: response time (speed is for bench/), and
# ignored_auth, whose probes without a key / with a wrong one come faster here than nginx's
# keyless limit and the failed-authentication budget allow (they answer 429, as they should
# under such a flood). The CLI run below does run it (its hooks reset the budget per call), and
# test_security / test_hardening_api check key enforcement on every route.
load_all_checks()
SKIPPED_CHECKS = {"max_response_time", "ignored_auth"}
CHECKS = [check for check in CHECK_REGISTRY.get_all() if check.__name__ not in SKIPPED_CHECKS]


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
        if mode == GenerationMode.POSITIVE:
            fit_positive(case.body)
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()


# The CLI leaves out one check, negative data rejection: on multipart bodies it reports valid
# requests as schema-violating (its own report says "Invalid component: positive test case", and
# the request validates against our document). The in-process tests above run that check on
# every operation, in positive and negative mode.
def test_schemathesis_cli_every_phase_every_check(stack: Stack, fuzz_key: str) -> None:
    """`schemathesis run --checks all` over all four phases (examples, coverage, fuzzing,
    stateful) against the live stack: no 5xx, no response or schema violation, every valid
    request accepted."""
    redis_url = stack.redis().connection_pool.connection_kwargs
    env = {
        **stack.env,
        "SCHEMATHESIS_HOOKS": "server.tests.fuzz_cli_hooks",
        "SCRIPTORIUM_FUZZ_REDIS_URL": (
            f"redis://:{redis_url['password']}@127.0.0.1:{redis_url['port']}/0"
        ),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{stack.base_url}/openapi/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "negative_data_rejection",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "50",
            "--header",
            f"X-API-Key: {fuzz_key}",
            "--no-color",
            "--seed",
            "1",
        ],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
    assert " passed" in run.stdout, run.stdout[-2000:]

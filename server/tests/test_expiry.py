"""Results expire after results.ttl_s; then status answers 410, not 404 (own short-TTL stack)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from server.tests.conftest import jpeg_bytes
from server.tests.stack import Stack, start_stack

TTL_S = 3


@pytest.fixture(scope="module")
def short_ttl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("ttl"), SCRIPTORIUM_RESULTS__TTL_S=str(TTL_S))
    stack.create_key("carol")
    stack.create_key("dave")
    yield stack
    stack.stop()


def test_expired_result_is_410_and_uploads_are_gone(short_ttl_stack: Stack, pages) -> None:
    api = short_ttl_stack.client(short_ttl_stack.keys["carol"])
    task_id = api.upload([("p.jpg", jpeg_bytes(pages[0]))]).json()["task_id"]
    body = api.wait(task_id)
    assert body["state"] == "SUCCEEDED"
    assert body["expires_at"] is not None
    assert not (short_ttl_stack.data_dir / "uploads" / task_id).exists()

    time.sleep(TTL_S + 1.5)
    gone = api.status(task_id)
    assert gone.status_code == 410, gone.text
    assert gone.json()["error"]["code"] == "expired"
    # Another key cannot even learn that the id existed.
    other = short_ttl_stack.client(short_ttl_stack.keys["dave"])
    assert other.status(task_id).status_code == 404

"""Uploads held in Redis are budgeted per key and in total: reserved as a task is admitted,
given back as it ends (model/uploads.py). The app on a bare Redis; its tasks stay queued (no
worker), which is when uploads pile up."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

KB = 1024


def _png(seed: int, side: int = 96) -> bytes:
    """A PNG of noise (it does not compress): about side * side * 3 bytes."""
    noise = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), noise).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def app(make_app):
    client = make_app(
        uploads={"max_held_bytes_per_key": 100 * KB, "max_held_bytes_total": 150 * KB}
    )
    client.keys = {name: client.keys.create(name) for name in ("alice", "bob")}
    return client


def _upload(app, key: str, data: bytes):
    return app.post(
        "/task",
        data={"type": "detect", "images": (io.BytesIO(data), "page.png")},
        content_type="multipart/form-data",
        headers={"X-API-Key": app.keys[key]},
    )


def test_uploads_are_budgeted_per_key_and_in_total(app) -> None:
    page = _png(1)
    assert 20 * KB < len(page) < 40 * KB, len(page)
    per_key = 100 * KB // len(page)  # tasks of one key that fit its budget
    alice = [_upload(app, "alice", _png(n)) for n in range(per_key)]
    assert {r.status_code for r in alice} == {202}, [r.get_data(as_text=True) for r in alice]

    refused = _upload(app, "alice", _png(99))
    assert refused.status_code == 429, refused.get_data(as_text=True)
    error = refused.get_json()["error"]
    assert error["code"] == "upload_budget_exceeded" and "this key's tasks" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1

    # Another key has its own budget, until the service's total is reached.
    bob_ok = 150 * KB // len(page) - per_key
    bob = [_upload(app, "bob", _png(100 + n)) for n in range(bob_ok)]
    assert {r.status_code for r in bob} == {202}
    full = _upload(app, "bob", _png(200))
    assert full.status_code == 429
    assert "the service holds" in full.get_json()["error"]["message"]
    # What Redis holds stays within the total budget (the refused uploads were never saved).
    held = sum(app.redis.strlen(k) for k in app.redis.scan_iter("sc:upload:*"))
    assert held <= 150 * KB
    print(f"uploads held in Redis: {held} bytes (budget {150 * KB})")

    # A task's end gives its bytes back: alice's cancelled task makes room for bob.
    task_id = alice[0].get_json()["task_id"]
    cancelled = app.delete(f"/terminate/{task_id}", headers={"X-API-Key": app.keys["alice"]})
    assert cancelled.get_json()["state"] == "CANCELLED", cancelled.get_data(as_text=True)
    assert _upload(app, "bob", _png(201)).status_code == 202


def test_uploads_larger_than_a_budget_are_refused_as_too_large(app) -> None:
    resp = _upload(app, "alice", _png(3, side=200))  # ~120 KB: over the key's whole budget
    assert resp.status_code == 413, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "uploads_too_large"


def test_a_reservation_is_given_back_once_and_orphans_are_reclaimed(clean_redis) -> None:
    from model.lifecycle.housekeeping import purge_orphan_uploads
    from model.tasks.store import TaskStore
    from model.uploads import OverBudget, UploadStore

    uploads = UploadStore(clean_redis, Path("/nonexistent"))
    uploads.reserve("t1", "alice", 60, (100, 80))
    with pytest.raises(OverBudget) as refused:
        uploads.reserve("t2", "alice", 30, (100, 80))
    assert refused.value.scope == "key"
    uploads.reserve("t3", "bob", 40, (100, 80))
    with pytest.raises(OverBudget) as refused:
        uploads.reserve("t4", "carol", 1, (100, 80))
    assert refused.value.scope == "total"
    assert (uploads.held_bytes(), uploads.held_bytes("alice")) == (100, 60)
    assert uploads.release("t1") and not uploads.release("t1")  # once
    assert (uploads.held_bytes(), uploads.held_bytes("alice")) == (40, 0)
    # t3's submit died before its task was created: housekeeping gives its bytes back.
    store = TaskStore(clean_redis, 60, 60)
    assert purge_orphan_uploads(store, uploads, min_age_s=0) == ["t3"]
    assert uploads.held_bytes() == 0

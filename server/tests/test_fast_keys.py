"""The API process's key cache (model.keys.KeyCache): SQLite is read once per key per TTL, and
a revoked or rotated key is still refused within a second."""

from __future__ import annotations

import time
from pathlib import Path

from model.keys import KEY_CACHE_TTL_S, KeyCache, KeyStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _counting(store: KeyStore) -> list[str]:
    """Every key database read of `store`, recorded."""
    reads: list[str] = []
    read = store.lookup_hash

    def lookup_hash(key_hash: str):
        reads.append(key_hash)
        return read(key_hash)

    store.lookup_hash = lookup_hash  # type: ignore[method-assign]
    return reads


def test_an_active_key_is_read_once_per_ttl_and_a_revoked_one_refused_after_it(
    tmp_path: Path,
) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    key = store.create("alice")
    clock = Clock()
    cache = KeyCache(store, ttl_s=0.5, clock=clock)
    reads = _counting(store)

    assert cache.lookup(key).name == "alice"
    clock.now += 0.4
    assert cache.lookup(key).name == "alice"
    assert len(reads) == 1  # the second request did not open SQLite

    store.revoke("alice")
    clock.now += 0.2  # 0.6 s after the read: the entry has expired
    assert cache.lookup(key) is None
    assert len(reads) == 2


def test_unknown_keys_are_not_remembered_and_the_cache_stays_bounded(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    clock = Clock()
    cache = KeyCache(store, ttl_s=10, max_entries=3, clock=clock)
    reads = _counting(store)
    for _ in range(3):
        assert cache.lookup("sk_not-a-key") is None
    assert len(reads) == 3 and cache._found == {}

    keys = [store.create(f"k{i}") for i in range(5)]
    for key in keys:
        assert cache.lookup(key) is not None
        assert len(cache._found) <= 3


def test_a_revoked_or_rotated_key_is_refused_within_a_second(app_client) -> None:
    """Through the app: the key is used (and cached), changed in the database, and refused once
    the cache's trust has run out — at most KEY_CACHE_TTL_S later, well within a second."""
    assert KEY_CACHE_TTL_S <= 0.5
    keys: KeyStore = app_client.application.extensions["scriptorium"].keys
    other = keys.create("rotating")
    for _ in range(3):
        assert app_client.get("/tasks").status_code == 200
        assert app_client.get("/tasks", headers={"X-API-Key": other}).status_code == 200

    keys.revoke("fast")
    renewed = keys.rotate("rotating")
    time.sleep(1.0)
    assert app_client.get("/tasks").status_code == 401
    assert app_client.get("/tasks", headers={"X-API-Key": other}).status_code == 401
    assert app_client.get("/tasks", headers={"X-API-Key": renewed}).status_code == 200

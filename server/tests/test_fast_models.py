"""Fast layer: the imported-model store (model/inference/catalog.py) on a bare redis-server —
names, content-addressed blobs, their removal, the workers' disk cache and how a worker process
follows added and removed models (model/inference/live.py, with a stand-in for the loader:
loading real weights is the live tests' part)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import redis

from model.celery_app import QUEUE, queue_for
from model.inference.catalog import (
    BlobCache,
    Catalog,
    ModelStoreError,
    Quota,
    new_card,
    sha256_of,
    validate_name,
    visible,
)
from model.inference.importer import DownloadRefused, no_network
from model.inference.live import LiveDetectors
from model.jobs.train.publish import ModelStore
from model.keyspace import MODEL_BLOB_PREFIX
from model.settings import Settings

WEIGHTS, ONNX = b"weights" * 100, b"onnx" * 100


@pytest.fixture
def catalog(clean_redis: redis.Redis) -> Catalog:
    port = clean_redis.connection_pool.connection_kwargs["port"]
    return Catalog(redis.Redis(port=port), max_bytes=10_000)


def _publish(catalog: Catalog, name: str, weights: bytes = WEIGHTS, onnx: bytes | None = ONNX):
    card = new_card(name, classes=["figure"], imgsz=320, sha256=sha256_of(weights))
    blobs = {sha256_of(weights): weights}
    if onnx is not None:
        card["onnx_sha256"] = sha256_of(onnx)
        blobs[sha256_of(onnx)] = onnx
    catalog.publish(card, blobs)
    return card


@pytest.mark.parametrize(
    "name",
    ["../etc", "a/b", "x.pt", "m.onnx", "Upper", "", "-lead", "a" * 65, "sp ace", "a..b", "c.json"],
)
def test_a_model_name_is_never_a_path(name: str) -> None:
    with pytest.raises(ModelStoreError) as caught:
        validate_name(name)
    assert caught.value.code == "invalid_model_name"


@pytest.mark.parametrize("name", ["woodcuts", "maps-v2", "yolo11n_hist.1"])
def test_plain_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


def test_publish_lists_the_card_and_bumps_the_version(catalog: Catalog) -> None:
    before = catalog.version()
    card = _publish(catalog, "woodcuts")
    assert catalog.cards() == {"woodcuts": card}
    assert catalog.version() == before + 1
    assert catalog.blob(card["sha256"]) == WEIGHTS


def test_a_taken_name_and_an_oversized_or_mislabelled_blob_publish_nothing(
    catalog: Catalog,
) -> None:
    _publish(catalog, "woodcuts")
    version = catalog.version()
    with pytest.raises(ModelStoreError, match="exists"):
        _publish(catalog, "woodcuts", b"other")
    with pytest.raises(ModelStoreError) as caught:
        _publish(catalog, "big", b"x" * 10_001, None)
    assert caught.value.code == "model_too_large"
    card = new_card("liar", classes=["a"], imgsz=320, sha256="0" * 64)
    with pytest.raises(ModelStoreError) as caught:
        catalog.publish(card, {"0" * 64: b"not that"})
    assert caught.value.code == "blob_mismatch"
    assert set(catalog.cards()) == {"woodcuts"}
    assert catalog.version() == version
    assert catalog.blob(sha256_of(b"x" * 10_001)) is None


def test_remove_deletes_blobs_no_other_model_uses(catalog: Catalog) -> None:
    _publish(catalog, "first")
    _publish(catalog, "second", onnx=b"another onnx")  # same weights, its own ONNX
    assert catalog.remove("first")
    assert catalog.blob(sha256_of(WEIGHTS)) == WEIGHTS  # "second" still uses them
    assert catalog.blob(sha256_of(ONNX)) is None
    assert catalog.remove("second")
    assert catalog.redis.keys(MODEL_BLOB_PREFIX + "*") == []
    assert not catalog.remove("second")
    assert catalog.cards() == {}


def test_the_cache_verifies_blobs_and_fetches_a_tampered_file_again(
    catalog: Catalog, tmp_path: Path
) -> None:
    card = _publish(catalog, "woodcuts")
    path = BlobCache(tmp_path).ensure(catalog, card["sha256"], ".pt")
    assert path.read_bytes() == WEIGHTS
    path.write_bytes(b"tampered")
    assert BlobCache(tmp_path).ensure(catalog, card["sha256"], ".pt").read_bytes() == WEIGHTS
    # A blob whose bytes in Redis are not what its name says is refused, nothing cached.
    catalog.redis.set(MODEL_BLOB_PREFIX + "f" * 64, b"whatever")
    with pytest.raises(ModelStoreError) as caught:
        BlobCache(tmp_path).ensure(catalog, "f" * 64, ".pt")
    assert caught.value.code == "blob_mismatch"
    assert not (tmp_path / ("f" * 64 + ".pt")).exists()
    assert list(tmp_path.glob(".incoming-*")) == []


class _Loaded:
    def __init__(self, info: Any) -> None:
        self.name, self.info = info.name, info


def test_a_worker_follows_added_and_removed_models_and_prunes_its_cache(
    catalog: Catalog, tmp_path: Path
) -> None:
    live = LiveDetectors({"shipped": object()}, catalog, BlobCache(tmp_path), _Loaded)
    assert not live.sync() and set(live) == {"shipped"}
    card = _publish(catalog, "woodcuts")
    # A task naming a model published since the last sync loads it at once.
    assert live.get("woodcuts").info.weights.read_bytes() == WEIGHTS
    assert live["woodcuts"].info.onnx.read_bytes() == ONNX
    assert live.imported == {"woodcuts": card["sha256"]}
    assert not live.sync()
    catalog.remove("woodcuts")
    assert live.sync()
    assert set(live) == {"shipped"}
    assert list(tmp_path.iterdir()) == []
    assert live.get("woodcuts") is None


def test_a_model_that_does_not_load_is_reported_not_fatal(catalog: Catalog, tmp_path: Path) -> None:
    def broken(info: Any) -> Any:
        if info.name == "bad":
            raise RuntimeError("not loadable")
        return _Loaded(info)

    _publish(catalog, "bad")
    _publish(catalog, "good", weights=b"good weights")
    live = LiveDetectors({}, catalog, BlobCache(tmp_path), broken)
    assert live.sync()
    assert set(live) == {"good"}
    assert "not loadable" in live.problems["bad"]


def test_imported_models_go_to_the_default_queue() -> None:
    settings = Settings()
    assert queue_for(settings, ["woodcuts"], everywhere={"woodcuts"}) == QUEUE
    assert queue_for(settings, ["woodcuts"]) != QUEUE


def test_an_import_reaches_no_network() -> None:
    with no_network(), pytest.raises(DownloadRefused):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with socket.create_connection(listener.getsockname(), timeout=1):
        pass  # connections work again after
    listener.close()


# --- whose models: visibility and per-key quotas (model/api/publishing.py) ----------------------


def _owned(catalog: Catalog, name: str, owner: str | None, size: int = 100) -> dict:
    weights = f"{name} weights".encode()
    card = new_card(name, classes=["figure"], imgsz=320, sha256=sha256_of(weights))
    catalog.publish({**card, "owner": owner, "size": size}, {sha256_of(weights): weights})
    return card


def test_a_keys_quota_counts_its_own_models_in_the_publishing_transaction(
    catalog: Catalog,
) -> None:
    quota = Quota(models=2, bytes=1000)
    _owned(catalog, "everyones", None, size=5000)  # every key's: counted against none
    _owned(catalog, "bobs", "bob", size=900)
    _owned(catalog, "first", "alice", size=600)
    with pytest.raises(ModelStoreError) as caught:
        _owned_with(catalog, quota, "too-big", "alice", size=401)
    assert caught.value.code == "model_storage_exceeded"
    _owned_with(catalog, quota, "second", "alice", size=400)
    with pytest.raises(ModelStoreError) as caught:
        _owned_with(catalog, quota, "third", "alice", size=1)
    assert caught.value.code == "too_many_models"
    _owned_with(catalog, quota, "for-all", None, size=5000)  # no owner, no quota
    assert set(catalog.cards()) == {"everyones", "bobs", "first", "second", "for-all"}
    assert [visible(c, "alice") for c in catalog.cards().values()] == [0, 1, 1, 1, 1]


def _owned_with(catalog: Catalog, quota: Quota, name: str, owner: str | None, size: int) -> None:
    weights = f"{name} weights".encode()
    card = new_card(name, classes=["figure"], imgsz=320, sha256=sha256_of(weights), size=size)
    catalog.publish({**card, "owner": owner}, {sha256_of(weights): weights}, quota)


def test_a_keys_model_is_listed_and_usable_by_that_key_alone(make_app, tmp_path: Path) -> None:
    client = make_app()
    alice, bob = client.keys.create("alice"), client.keys.create("bob")
    catalog = Catalog(
        redis.Redis(port=client.redis.connection_pool.connection_kwargs["port"]), 10_000
    )
    _owned(catalog, "bobs-woodcuts", "bob")
    _owned(catalog, "shared", None)

    def listed(key: str) -> dict[str, dict]:
        models = client.get("/models", headers={"X-API-Key": key}).json["models"]
        return {m["name"]: m for m in models}

    assert "bobs-woodcuts" not in listed(alice) and listed(alice)["shared"]["owner"] is None
    assert listed(bob)["bobs-woodcuts"]["owner"] == "bob"
    detect = {"type": "detect", "input": {"image_urls": ["https://example.org/p.jpg"]}}
    train = {"type": "train", "input": {"dataset_url": "https://example.org/set.zip"}}
    for key, status in [(alice, 422), (bob, 202)]:
        for body, field in [(detect, "model"), (train, "base_model")]:
            params = {"name": "new", field: "bobs-woodcuts"} if field == "base_model" else {}
            resp = client.post(
                "/task",
                json={**body, "params": {field: "bobs-woodcuts", **params}},
                headers={"X-API-Key": key},
            )
            assert resp.status_code == status, resp.json
            if status == 422:
                assert resp.json["error"]["code"] == "unknown_model"
    # The worker's side of train resolves its base model for the task's key the same way.
    store = ModelStore(client.app_settings, catalog.redis)
    assert store.base("bobs-woodcuts", "alice") is None
    assert store.base("bobs-woodcuts", "bob").name == "bobs-woodcuts"  # type: ignore[union-attr]


def test_train_publishes_for_the_key_or_everyone_within_its_quota(make_app) -> None:
    client = make_app(training={"max_models_per_key": 2, "max_model_bytes_per_key": 1000})
    keys = {name: client.keys.create(name) for name in ("alice", "bob")}
    keys["boss"] = client.keys.create("boss", admin=True)
    catalog = Catalog(
        redis.Redis(port=client.redis.connection_pool.connection_kwargs["port"]), 10_000
    )

    def train(key: str, **params: str) -> Any:
        body = {"type": "train", "input": {"dataset_url": "https://example.org/set.zip"}}
        body["params"] = {"name": f"new-{key}", **params}
        return client.post("/task", json=body, headers={"X-API-Key": keys[key]})

    def visibility(resp: Any) -> str:
        assert resp.status_code == 202, resp.json
        spec = client.redis.hget(f"sc:task:{resp.json['task_id']}", "spec")
        return json.loads(spec)["params"]["visibility"]

    _owned(catalog, "alices-first", "alice", size=1000)
    refused = train("alice")
    assert (refused.status_code, refused.json["error"]["code"]) == (413, "model_storage_exceeded")
    _owned(catalog, "alices-second", "alice", size=0)
    refused = train("alice")
    assert (refused.status_code, refused.json["error"]["code"]) == (429, "too_many_models")
    refused = train("bob", visibility="everyone")
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "forbidden")
    assert visibility(train("bob")) == "key"
    _owned(catalog, "bosss", "boss", size=5000)  # admin keys publish for everyone, no quota
    assert visibility(train("boss")) == "everyone"
    # The worker checks the quota again before training (another task may have published).
    store = ModelStore(client.app_settings, catalog.redis)
    with pytest.raises(ModelStoreError, match="max_models_per_key"):
        store.check_quota("alice")
    store.check_quota(None)


def test_a_key_removes_its_own_models_an_admin_key_everyones(make_app) -> None:
    client = make_app()
    keys = {name: client.keys.create(name) for name in ("alice", "bob")}
    keys["boss"] = client.keys.create("boss", admin=True)
    catalog = Catalog(
        redis.Redis(port=client.redis.connection_pool.connection_kwargs["port"]), 10_000
    )
    _owned(catalog, "bobs", "bob")
    _owned(catalog, "shared", None)

    def remove(key: str, name: str) -> tuple[int, str | None]:
        resp = client.delete(f"/models/{name}", headers={"X-API-Key": keys[key]})
        return resp.status_code, (resp.json or {}).get("error", {}).get("code")

    assert remove("alice", "bobs") == (404, "model_not_found")  # as if it did not exist
    assert remove("alice", "shared") == (403, "forbidden")
    assert remove("bob", "illustrations-demo") == (404, "model_not_found")  # shipped: stays
    assert remove("bob", "..") == (404, "model_not_found")
    assert remove("bob", "bobs") == (204, None)
    assert remove("boss", "shared") == (204, None)
    assert catalog.cards() == {}

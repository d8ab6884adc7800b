"""Imported models, shared by every host through Redis: the model store's API.

`python -m model models add PATH.pt` (model/inference/importer.py) checks a YOLO detector and
publishes it here; every worker host, including hosts added later, fetches it from here, caches
it on disk and loads it without a restart (model/inference/live.py); the API lists it in
GET /models and routes tasks naming it. No file is ever copied between hosts by hand.

Layout in Redis (keys under `sc:models:`):
- `sc:models:cards`: hash, model name -> card (JSON): task, classes, imgsz, `sha256` of the
  weights, `onnx_sha256` of the ONNX export (or null), sizes, provenance of the import;
- `sc:models:blob:<sha256>`: the file's bytes, content-addressed. One blob may serve several
  names; removing the last name that uses a blob deletes it. A blob is at most
  `models.max_bytes` (flask_config.yaml): Redis holds it in memory;
- `sc:models:version`: a counter bumped by every add and remove. Workers poll it with their
  heartbeat (one GET) and reread the cards only when it moved.

A card and its blobs are written in one MULTI (nothing half-published: a worker sees the card
only once its bytes are there), and removed by one Lua script.

Workers cache blobs under `<data_dir>/model-cache/<sha256>.<pt|onnx>` (`BlobCache`): written to
a temporary file, checked against the sha256 in its name, then renamed, and checked again the
first time a process loads it, so a corrupted or tampered cache file is fetched anew.

Names: `validate_name` (lower-case letters, digits, `.`, `_`, `-`; never a path, never a file
suffix), one namespace for every key. Who may use a model: a card's `owner` (a key's name) makes it
that key's alone; a card without one (the CLI's imports, an admin key's training) is every key's
(`visible`). A key's own models are capped in number and bytes (`Quota`, checked in the same
transaction that publishes).

Torch-free: the HTTP process imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from model.inference.registry import ModelInfo
from model.keyspace import MODEL_BLOB_PREFIX, MODEL_CARDS_KEY, MODELS_VERSION_KEY

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Deletes a card, then each of its blobs that no remaining card names (ARGV[1]: the name).
_REMOVE = """
local card = redis.call('HGET', KEYS[1], ARGV[1])
if not card then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local others = redis.call('HVALS', KEYS[1])
for _, field in ipairs({'sha256', 'onnx_sha256'}) do
  local sha = string.match(card, '"' .. field .. '": *"(%x+)"')
  if sha then
    local used = false
    for _, other in ipairs(others) do
      if string.find(other, sha, 1, true) then used = true break end
    end
    if not used then redis.call('DEL', KEYS[3] .. sha) end
  end
end
redis.call('INCR', KEYS[2])
return 1
"""


class ModelStoreError(Exception):
    """A model cannot be added, removed or fetched: the message says why (CLI and API)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate_name(name: str) -> str:
    """A model name that can never be a path: raises ModelStoreError otherwise."""
    if not _NAME.match(name) or ".." in name or name.endswith((".pt", ".onnx", ".json")):
        raise ModelStoreError(
            "invalid_model_name",
            f"model name {name!r}: 1-64 of a-z 0-9 . _ -, starting with a letter or digit, "
            "no '..' and no file suffix",
        )
    return name


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def visible(card: dict[str, Any], owner: str) -> bool:
    """Whether the key named `owner` may use (and see) this model: its own, or everyone's."""
    return card.get("owner") in (None, owner)


def stored_bytes(card: dict[str, Any]) -> int:
    """The bytes a model holds in Redis: its weights and its ONNX export."""
    return int(card.get("size") or 0) + int(card.get("onnx_size") or 0)


@dataclass(frozen=True)
class Quota:
    """How many models, and how many bytes of them, one key may own (training.max_models_per_key,
    training.max_model_bytes_per_key); everyone's models count against no key."""

    models: int
    bytes: int

    @classmethod
    def of(cls, settings: Any) -> Quota:
        return cls(settings.training.max_models_per_key, settings.training.max_model_bytes_per_key)

    def check(self, cards: Iterable[dict[str, Any]], owner: str, adding: int = 0) -> None:
        """Raises ModelStoreError when `owner`'s models plus one of `adding` bytes pass it;
        `adding=0` asks whether one more model could fit at all (the API, before training)."""
        own = [card for card in cards if card.get("owner") == owner]
        if len(own) + 1 > self.models:
            raise ModelStoreError(
                "too_many_models",
                f"the key {owner!r} owns {len(own)} models, the most it may "
                f"(training.max_models_per_key); remove one first",
            )
        used = sum(stored_bytes(card) for card in own)
        if used + adding > self.bytes or used >= self.bytes:
            more = f" and this one {adding}" if adding else ""
            raise ModelStoreError(
                "model_storage_exceeded",
                f"the key {owner!r}'s models hold {used} bytes{more}; "
                f"training.max_model_bytes_per_key allows {self.bytes}; remove one first",
            )


class Catalog:
    """The imported models in Redis. `redis` must be binary-safe (decode_responses=False)."""

    def __init__(self, redis: Redis, max_bytes: int) -> None:
        self.redis = redis
        self.max_bytes = max_bytes

    def version(self) -> int:
        return int(self.redis.get(MODELS_VERSION_KEY) or 0)

    def cards(self) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(MODEL_CARDS_KEY)
        return {_text(k): json.loads(v) for k, v in sorted(raw.items())}

    def card(self, name: str) -> dict[str, Any] | None:
        raw = self.redis.hget(MODEL_CARDS_KEY, name)
        return json.loads(raw) if raw else None

    def publish(
        self, card: dict[str, Any], blobs: dict[str, bytes], quota: Quota | None = None
    ) -> None:
        """Add a model: its blobs (sha256 -> bytes, checked here) and its card, all at once.
        A name already taken is refused (remove it first); a card with an `owner` must fit
        that key's `quota`, checked against the cards as the transaction sees them."""
        name = validate_name(card["name"])
        for sha, data in blobs.items():
            if len(data) > self.max_bytes:
                raise ModelStoreError(
                    "model_too_large",
                    f"{len(data)} bytes; models.max_bytes allows {self.max_bytes}",
                )
            if sha256_of(data) != sha:
                raise ModelStoreError("blob_mismatch", f"blob does not hash to {sha}")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(MODEL_CARDS_KEY)
            if pipe.hexists(MODEL_CARDS_KEY, name):
                raise ModelStoreError("model_exists", f"a model named {name!r} exists already")
            if quota is not None and card.get("owner") is not None:
                cards = [json.loads(raw) for raw in pipe.hvals(MODEL_CARDS_KEY)]
                quota.check(cards, card["owner"], stored_bytes(card))
            pipe.multi()
            for sha, data in blobs.items():
                pipe.set(MODEL_BLOB_PREFIX + sha, data)
            pipe.hset(MODEL_CARDS_KEY, name, json.dumps(card, sort_keys=True))
            pipe.incr(MODELS_VERSION_KEY)
            pipe.execute()

    def remove(self, name: str) -> bool:
        validate_name(name)
        keys = [MODEL_CARDS_KEY, MODELS_VERSION_KEY, MODEL_BLOB_PREFIX]
        return bool(self.redis.eval(_REMOVE, len(keys), *keys, name))

    def blob(self, sha: str) -> bytes | None:
        if not _SHA256.match(sha):
            raise ModelStoreError("invalid_sha256", f"not a sha256: {sha!r}")
        return self.redis.get(MODEL_BLOB_PREFIX + sha)


class BlobCache:
    """A worker host's copies of the blobs it uses, each checked against its sha256."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._verified: set[Path] = set()  # checked by this process already

    def path(self, sha: str, suffix: str) -> Path:
        return self.folder / f"{sha}{suffix}"

    def ensure(self, catalog: Catalog, sha: str, suffix: str) -> Path:
        """The blob's file here, fetched from Redis when missing or not what its name says."""
        path = self.path(sha, suffix)
        if path in self._verified:
            return path
        if path.is_file() and sha256_file(path) == sha:
            self._verified.add(path)
            return path
        data = catalog.blob(sha)
        if data is None:
            raise ModelStoreError("blob_missing", f"blob {sha} is not in Redis (removed?)")
        if sha256_of(data) != sha:
            raise ModelStoreError("blob_mismatch", f"blob {sha} does not hash to its name")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # whole or absent: a reader never sees half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._verified.add(path)
        return path

    def prune(self, keep: set[str]) -> None:
        """Delete cached blobs no card names any more."""
        for path in self.folder.glob("*"):
            if path.is_file() and path.name.split(".")[0] not in keep:
                path.unlink(missing_ok=True)
                self._verified.discard(path)


def model_info(card: dict[str, Any], weights: Path, onnx: Path | None) -> ModelInfo:
    """The registry's description of an imported model, its files in the worker's cache."""
    return ModelInfo(
        name=card["name"],
        task=card.get("task", "detect"),
        classes=list(card["classes"]),
        imgsz=int(card["imgsz"]),
        weights=weights,
        onnx=onnx,
        sha256=card["sha256"],
    )


def describe(card: dict[str, Any], default: str) -> dict[str, Any]:
    """A card as GET /models shows it (the shape of ModelInfo.describe, plus `imported`)."""
    return {
        "name": card["name"],
        "task": card.get("task", "detect"),
        "classes": list(card["classes"]),
        "input_size": int(card["imgsz"]),
        "sha256": card["sha256"],
        "default": card["name"] == default,
        "backends": ["torch", "onnx"] if card.get("onnx_sha256") else ["torch"],
        "imported": True,
        "owner": card.get("owner"),
    }


def new_card(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": validate_name(name), "task": "detect", "added_at": round(time.time()), **fields}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

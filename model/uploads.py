"""Uploaded files of a task, kept in Redis until the task ends, so that a worker on any host can
read them (the API host's disk is not shared with worker hosts).

One key per file, `sc:upload:<task id>:<index>`, holding the bytes as sent. Redis is the one
thing every host reaches, but memory is dear there, so:
- a task may keep at most `uploads.max_total_bytes` of them (the API answers 413 beyond);
- each key has a TTL bounded by the task's lifetime (`Settings.upload_ttl_s`: the hard time
  limit plus `uploads.queue_wait_s` of waiting), set at submit and set again when a worker
  starts the task, so a file outlives its task by a bounded time whatever happens to it;
- model/lifecycle/ending.py deletes them as soon as the task ends, and housekeeping purges orphans;
- their bytes are reserved at admission against two budgets, one per key and one for the whole
  service (`uploads.max_held_bytes_per_key`, `uploads.max_held_bytes_total`), and given back as
  the task ends (`discard`): a key cannot fill Redis with queued uploads, nor all keys together.

The task store's client decodes replies as text; files need a binary-safe client of their own
(`decode_responses=False`).

Releases before this one kept uploads under <data_dir>/uploads/<task id>/ on the API host: a task
queued across the upgrade still reads its files there (its inputs carry a `path`), and that
folder is deleted with the task, or purged, as before.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis import Redis

from model.jobs import UploadMissing
from model.jobs.contract import DatasetUpload, ImageUpload, ManifestUpload, TaskSpec
from model.keyspace import UPLOAD_PREFIX, UPLOADS_HELD_BYTES_KEY, UPLOADS_HELD_KEY

# Reserve a task's upload bytes if both budgets allow them, in one step (parallel submits
# cannot pass a budget together). KEYS: held, sums; ARGV: task id, owner, bytes, now, budget
# in total, budget per key. Returns 'ok', 'total' or 'key' (the budget that refused it).
_RESERVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'ok' end
local size = tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
if total + size > tonumber(ARGV[5]) then return 'total' end
local mine = tonumber(redis.call('HGET', KEYS[2], 'key:' .. ARGV[2]) or '0')
if mine + size > tonumber(ARGV[6]) then return 'key' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[2])
redis.call('HINCRBY', KEYS[2], 'total', size)
redis.call('HINCRBY', KEYS[2], 'key:' .. ARGV[2], size)
return 'ok'
"""

# Give a task's reservation back, once (a second call finds nothing). KEYS: held, sums;
# ARGV: task id.
_RELEASE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return 0 end
local size, owner = string.match(held, '^(%d+) [^ ]+ (.*)$')
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'total', -tonumber(size))
if redis.call('HINCRBY', KEYS[2], 'key:' .. owner, -tonumber(size)) <= 0 then
  redis.call('HDEL', KEYS[2], 'key:' .. owner)
end
return 1
"""


class OverBudget(Exception):
    """Reserving a task's uploads would pass a budget: `scope` is "total" or "key"."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


def key_for(task_id: str, index: int) -> str:
    return f"{UPLOAD_PREFIX}{task_id}:{index:05d}"


def _entries(spec: TaskSpec) -> list[ImageUpload | ManifestUpload | DatasetUpload]:
    return spec.of_kind(ImageUpload, ManifestUpload, DatasetUpload)


class UploadStore:
    def __init__(self, redis: Redis, legacy_root: Path) -> None:
        # Binary-safe: bytes in, bytes out (the task store's client decodes replies as text).
        self.redis = redis
        self.legacy_root = legacy_root
        # None where only path-kept (legacy) uploads are read, as a worker's unit tests do.
        self._reserve = redis.register_script(_RESERVE) if redis is not None else None
        self._release = redis.register_script(_RELEASE) if redis is not None else None

    # --- the API side ------------------------------------------------------------------------
    def reserve(self, task_id: str, owner: str, size: int, budgets: tuple[int, int]) -> None:
        """Hold `size` bytes for a task's uploads (budgets: in total, per key) before they are
        saved; raises OverBudget. Given back by `discard` (the task's end) or `release`."""
        if size <= 0:
            return
        outcome = self._reserve(
            keys=[UPLOADS_HELD_KEY, UPLOADS_HELD_BYTES_KEY],
            args=[task_id, owner, size, time.time(), *budgets],
        )
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome != "ok":
            raise OverBudget(outcome)

    def release(self, task_id: str) -> bool:
        """Give a task's reserved bytes back (False: it held none, or gave them back already)."""
        return bool(self._release(keys=[UPLOADS_HELD_KEY, UPLOADS_HELD_BYTES_KEY], args=[task_id]))

    def held_bytes(self, owner: str | None = None) -> int:
        """Bytes of uploads reserved, by one key's tasks or (None) by all."""
        value = self.redis.hget(UPLOADS_HELD_BYTES_KEY, f"key:{owner}" if owner else "total")
        return int(value or 0)

    def reservations(self) -> dict[str, float]:
        """Task id -> when its reservation was made, for every task holding one."""
        found = {}
        for task_id, value in self.redis.hgetall(UPLOADS_HELD_KEY).items():
            task = task_id.decode() if isinstance(task_id, bytes) else task_id
            text = value.decode() if isinstance(value, bytes) else value
            found[task] = float(text.split(" ", 2)[1])
        return found

    def save(self, task_id: str, files: list[bytes], ttl_s: int) -> None:
        """Store a task's files under key_for(task_id, 0..n-1), before the task is queued."""
        if not files:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for index, data in enumerate(files):
                pipe.set(key_for(task_id, index), data, ex=ttl_s)
            pipe.execute()

    # --- the worker side ---------------------------------------------------------------------
    def read(self, entry: ImageUpload | ManifestUpload | DatasetUpload) -> bytes:
        if entry.key is not None:
            data = self.redis.get(entry.key)
            if data is None:
                raise UploadMissing(f"upload {entry.filename!r} is no longer stored")
            return data
        try:  # stored by a release that kept uploads on the API host's disk
            return Path(entry.path or "").read_bytes()
        except OSError as exc:
            raise UploadMissing(f"upload {entry.filename!r} is not readable here") from exc

    def refresh(self, spec: TaskSpec, ttl_s: int) -> None:
        """A worker starts the task: its files live for its whole run, whatever it waited."""
        keys = [entry.key for entry in _entries(spec) if entry.key is not None]
        if not keys:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.expire(key, ttl_s)
            pipe.execute()

    # --- the end of a task, and orphans ------------------------------------------------------
    def discard(self, task_id: str, spec: dict[str, Any] | None) -> None:
        """Uploads are inputs only: once the task has ended they are deleted, and their bytes
        given back to the budgets."""
        self.release(task_id)
        try:
            entries = _entries(TaskSpec.model_validate(spec or {}))
        except ValidationError:
            entries = []
        keys = [entry.key for entry in entries if entry.key is not None]
        if keys:
            self.redis.delete(*keys)
        if any(entry.path is not None for entry in entries):
            shutil.rmtree(self.legacy_root / task_id, ignore_errors=True)

    def stored(self) -> dict[str, list[bytes]]:
        """Every upload key in Redis, by task id (housekeeping looks for orphans among them)."""
        found: dict[str, list[bytes]] = defaultdict(list)
        for key in self.redis.scan_iter(match=f"{UPLOAD_PREFIX}*".encode(), count=1000):
            task_id = key[len(UPLOAD_PREFIX) :].decode().rpartition(":")[0]
            found[task_id].append(key)
        return found

    def idle_s(self, keys: list[bytes]) -> float:
        """Seconds since any of these keys was last written or read (a key whose task record
        is missing but was stored a moment ago belongs to a submit in progress)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.object("idletime", key)
            idle = [value for value in pipe.execute() if value is not None]
        return float(min(idle)) if idle else float("inf")

    def delete(self, keys: list[bytes]) -> None:
        if keys:
            self.redis.delete(*keys)

    def legacy_folders(self) -> list[Path]:
        root = self.legacy_root
        return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []

"""Detections cached by content: (sha256 of the image bytes analysed, model sha256, params).

The same page seen again — another task, another manifest pointing at the same image, a retry —
costs no decode and no inference. Bounded both ways: every entry has a TTL, and an index by
insertion time evicts the oldest entries beyond `max_entries`.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from redis import Redis

from model.keyspace import DETECTION_CACHE_INDEX_KEY, DETECTION_CACHE_PREFIX
from model.metrics.record import Meter


def params_digest(model_sha256: str, params: dict[str, Any]) -> str:
    canonical = json.dumps({"model": model_sha256, **params}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class BoundedCache:
    """JSON values in Redis under `prefix`, each with a TTL, the oldest evicted beyond
    `max_entries` (an index by insertion time in `index_key`). Subclasses name the key space."""

    prefix = DETECTION_CACHE_PREFIX
    index_key = DETECTION_CACHE_INDEX_KEY
    kind = "cache"  # the `cache` label of its lookups in the metrics

    def __init__(self, redis: Redis | None, ttl_s: int, max_entries: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    @property
    def enabled(self) -> bool:
        return self.redis is not None and self.ttl_s > 0 and self.max_entries > 0

    @classmethod
    def key(cls, image_sha256: str, params_key: str) -> str:
        return f"{cls.prefix}{params_key}:{image_sha256}"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        raw = self.redis.get(key)  # type: ignore[union-attr]
        Meter(self.redis).cache_lookup(self.kind, raw is not None)  # type: ignore[arg-type]
        return json.loads(raw) if raw else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.time()
        with self.redis.pipeline() as pipe:  # type: ignore[union-attr]
            pipe.set(key, json.dumps(value), ex=self.ttl_s)
            pipe.zadd(self.index_key, {key: now})
            pipe.zremrangebyscore(self.index_key, "-inf", now - self.ttl_s)  # expired on their own
            pipe.zcard(self.index_key)
            size = pipe.execute()[-1]
        excess = int(size) - self.max_entries
        if excess > 0:
            oldest = [k for k, _ in self.redis.zpopmin(self.index_key, excess)]  # type: ignore[union-attr]
            if oldest:
                self.redis.delete(*oldest)  # type: ignore[union-attr]


class DetectionCache(BoundedCache):
    """Detections of a page: `{"width", "height", "detections"}`."""

    kind = "detections"

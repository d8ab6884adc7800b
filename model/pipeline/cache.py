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

PREFIX = "sc:cache:"
INDEX_KEY = "sc:cache-index"


def params_digest(model_sha256: str, params: dict[str, Any]) -> str:
    canonical = json.dumps({"model": model_sha256, **params}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class DetectionCache:
    def __init__(self, redis: Redis | None, ttl_s: int, max_entries: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    @property
    def enabled(self) -> bool:
        return self.redis is not None and self.ttl_s > 0 and self.max_entries > 0

    @staticmethod
    def key(image_sha256: str, params_key: str) -> str:
        return f"{PREFIX}{params_key}:{image_sha256}"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        raw = self.redis.get(key)  # type: ignore[union-attr]
        return json.loads(raw) if raw else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.time()
        with self.redis.pipeline() as pipe:  # type: ignore[union-attr]
            pipe.set(key, json.dumps(value), ex=self.ttl_s)
            pipe.zadd(INDEX_KEY, {key: now})
            pipe.zremrangebyscore(INDEX_KEY, "-inf", now - self.ttl_s)  # expired on their own
            pipe.zcard(INDEX_KEY)
            size = pipe.execute()[-1]
        excess = int(size) - self.max_entries
        if excess > 0:
            oldest = [k for k, _ in self.redis.zpopmin(INDEX_KEY, excess)]  # type: ignore[union-attr]
            if oldest:
                self.redis.delete(*oldest)  # type: ignore[union-attr]

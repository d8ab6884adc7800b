"""Page features cached by content, like detections (model/pipeline/cache.py): the key is the
sha256 of the image bytes plus a digest of the model sha256s and the params that shape the
features, so comparing a document again costs no decode, detection or feature extraction.

Entries are larger than detections (keypoints and thumbnails, ~100-300 KB a page), so this
cache has its own key space and bound (`similarity.cache_max_entries`), oldest evicted first,
each entry with a TTL. It plugs into the shared PageLoader, which asks `key`/`get` and reads
`width`, `height` and `detections` (here: the packed features) from a hit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

PREFIX = "sc:simcache:"
INDEX_KEY = "sc:simcache-index"


class FeatureCache:
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

    def put(self, key: str, width: int, height: int, payload: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.time()
        value = json.dumps({"width": width, "height": height, "detections": payload})
        with self.redis.pipeline() as pipe:  # type: ignore[union-attr]
            pipe.set(key, value, ex=self.ttl_s)
            pipe.zadd(INDEX_KEY, {key: now})
            pipe.zremrangebyscore(INDEX_KEY, "-inf", now - self.ttl_s)
            pipe.zcard(INDEX_KEY)
            size = pipe.execute()[-1]
        excess = int(size) - self.max_entries
        if excess > 0:
            oldest = [k for k, _ in self.redis.zpopmin(INDEX_KEY, excess)]  # type: ignore[union-attr]
            if oldest:
                self.redis.delete(*oldest)  # type: ignore[union-attr]

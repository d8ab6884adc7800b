"""Image service descriptions (parsed info.json) shared across tasks: one read per service a day.

A task already reads each info.json once (negotiate.ServiceInfo); this keeps the parsed
description in Redis, keyed by service id, so the next task on the same book — a rerun, detect
then similarity, another manifest of the same images — asks the image server for pixels only.
Optional: without Redis (the CLI, unit tests) nothing is cached. Only descriptions are kept, not
failures: a server down now may answer in a minute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from redis import Redis, RedisError

from model.iiif.image_api import ImageService
from model.keyspace import IIIF_INFO_PREFIX

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 86_400  # publishers rarely change a service; a day bounds a stale description
# A description listing thousands of sizes (hostile or odd) is not worth a Redis entry.
MAX_VALUE_BYTES = 32 * 1024


class InfoCache:
    def __init__(
        self,
        redis: Redis | None,
        ttl_s: int = DEFAULT_TTL_S,
        max_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        return self.redis is not None and self.ttl_s > 0

    @staticmethod
    def key(service: ImageService) -> str:
        # Ids are URLs of any length; the version is part of what was asked for.
        digest = hashlib.sha256(f"{service.version} {service.id}".encode()).hexdigest()
        return f"{IIIF_INFO_PREFIX}{digest[:40]}"

    def get(self, service: ImageService) -> ImageService | None:
        """The description kept for `service`, or None (not kept, unreadable, Redis down)."""
        if not self.enabled:
            return None
        try:
            raw = self.redis.get(self.key(service))  # type: ignore[union-attr]
        except RedisError as exc:  # a cache outage costs a request, never the page
            log.warning("info.json cache unavailable: %s", exc)
            return None
        return _decode(raw) if raw else None

    def put(self, service: ImageService, info: ImageService) -> None:
        """Keep `info` (read for `service`) unless it is too large."""
        if not self.enabled:
            return
        value = json.dumps(dataclasses.asdict(info), separators=(",", ":"))
        if len(value) > self.max_bytes:
            return
        try:
            self.redis.set(self.key(service), value, ex=self.ttl_s)  # type: ignore[union-attr]
        except RedisError as exc:
            log.warning("info.json cache unavailable: %s", exc)


def _decode(raw: str | bytes) -> ImageService | None:
    """An entry back as a description; one of another shape (older code, damage) is a miss."""
    try:
        fields: Any = json.loads(raw)
        if not isinstance(fields, dict):
            return None
        fields["sizes"] = tuple((int(w), int(h)) for w, h in fields.get("sizes", ()))
        return ImageService(**fields)
    except (ValueError, TypeError):
        return None

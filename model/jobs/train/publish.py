"""Publishing a trained model through the model store (model/inference/catalog.py).

The new weights go through the same checks as `models add` (importer.inspect: loads with
ultralytics, one dry inference, ONNX export where it can), then card and blobs are written in
one MULTI: every worker host picks the model up without a restart, and nothing is ever half
published. A name taken meanwhile is refused there too (`model_exists`).

Base models: a shipped model's weights are on disk; an imported one's come from the host's
blob cache (fetched from Redis and checked by sha256), if the task's key may use it.

Whose: `owner` None publishes for every key; a key's name, for that key alone, within its quota
(catalog.Quota), checked once before training (`check_quota`) and again in the publishing
transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.inference.catalog import BlobCache, Catalog, Quota, model_info, visible
from model.inference.registry import ModelInfo, discover


class ModelStore:
    """The train job's view of the models: find a base, check a name, publish a result."""

    def __init__(self, settings: Any, binary_redis: Any) -> None:
        self.settings = settings
        self.catalog = Catalog(binary_redis, settings.models.max_bytes)
        self.cache = BlobCache(settings.model_cache_dir)
        self.quota = Quota.of(settings)

    def base(self, name: str, key: str) -> ModelInfo | None:
        """The model `name` as the key named `key` may use it (None: no such model for it)."""
        found = discover(self.settings.model_dirs).get(name)
        if found is not None:
            return found
        card = self.catalog.card(name)
        if card is None or not visible(card, key):
            return None
        return model_info(card, self.cache.ensure(self.catalog, card["sha256"], ".pt"), None)

    def exists(self, name: str) -> bool:
        return name in discover(self.settings.model_dirs) or self.catalog.card(name) is not None

    def check_quota(self, owner: str | None) -> None:
        """Raises ModelStoreError when `owner` could not own one more model."""
        if owner is not None:
            self.quota.check(self.catalog.cards().values(), owner)

    def publish(
        self, name: str, weights: Path, work: Path, owner: str | None, extra: dict[str, Any]
    ) -> str:
        """Check and publish for `owner` (None: every key); returns the weights' sha256."""
        from model.inference.importer import inspect

        work.mkdir(parents=True, exist_ok=True)
        card, blobs = inspect(weights, work, self.settings.models.max_bytes, name)
        card = {**card, **extra, "source": "train job", "owner": owner}
        self.catalog.publish(card, blobs, self.quota)
        return str(card["sha256"])

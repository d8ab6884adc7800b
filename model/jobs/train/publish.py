"""Publishing a trained model through the model store (model/inference/catalog.py).

The new weights go through the same checks as `models add` (importer.inspect: loads with
ultralytics, one dry inference, ONNX export where it can), then card and blobs are written in
one MULTI: every worker host picks the model up without a restart, and nothing is ever half
published. A name taken meanwhile is refused there too (`model_exists`).

Base models: a shipped model's weights are on disk; an imported one's come from the host's
blob cache (fetched from Redis and checked by sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.inference.catalog import BlobCache, Catalog, model_info
from model.inference.registry import ModelInfo, discover


class ModelStore:
    """The train job's view of the models: find a base, check a name, publish a result."""

    def __init__(self, settings: Any, binary_redis: Any) -> None:
        self.settings = settings
        self.catalog = Catalog(binary_redis, settings.models.max_bytes)
        self.cache = BlobCache(settings.model_cache_dir)

    def base(self, name: str) -> ModelInfo | None:
        found = discover(self.settings.model_dirs).get(name)
        if found is not None:
            return found
        card = self.catalog.card(name)
        if card is None:
            return None
        return model_info(card, self.cache.ensure(self.catalog, card["sha256"], ".pt"), None)

    def exists(self, name: str) -> bool:
        return name in discover(self.settings.model_dirs) or self.catalog.card(name) is not None

    def publish(self, name: str, weights: Path, work: Path, extra: dict[str, Any]) -> str:
        """Check and publish; returns the weights' sha256."""
        from model.inference.importer import inspect

        work.mkdir(parents=True, exist_ok=True)
        card, blobs = inspect(weights, work, self.settings.models.max_bytes, name)
        self.catalog.publish({**card, **extra, "source": "train job"}, blobs)
        return str(card["sha256"])

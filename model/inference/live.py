"""A worker process's detectors, kept in step with the imported models (model/inference/catalog.py)
without a restart.

`LiveDetectors` is the `WorkerResources.detectors` dict: the models of the configured folders,
loaded at start, plus the imported ones. `sync()` (called by the heartbeat thread every
`models.sync_interval_s`, one GET when nothing changed) loads added models from the host's blob
cache (fetching and verifying blobs first) and drops removed ones. A task naming an imported
model this process has not synced yet syncs at once (`get`), so a model is usable as soon as
`models add` returns.

Worker process only: loading imports torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from model.inference.catalog import BlobCache, Catalog, model_info

log = logging.getLogger(__name__)


class LiveDetectors(dict):  # type: ignore[type-arg]
    def __init__(
        self,
        shipped: dict[str, Any],
        catalog: Catalog,
        cache: BlobCache,
        load: Callable[[Any], Any],
    ) -> None:
        super().__init__(shipped)
        self.shipped = set(shipped)
        self.catalog = catalog
        self.cache = cache
        self.load = load  # ModelInfo -> a detector
        self.imported: dict[str, str] = {}  # name -> sha256 of the weights loaded
        self.problems: dict[str, str] = {}  # name -> why it could not be loaded here
        self._seen_version = -1
        self._lock = threading.Lock()

    def get(self, name: Any, default: Any = None) -> Any:
        found = super().get(name)
        if found is None and isinstance(name, str) and name not in self.shipped:
            self.sync(force=True)
            found = super().get(name)
        return default if found is None else found

    def sync(self, force: bool = False) -> bool:
        """Catch up with the catalog; True when something changed."""
        with self._lock:
            version = self.catalog.version()
            if version == self._seen_version and not force:
                return False
            cards = {n: c for n, c in self.catalog.cards().items() if n not in self.shipped}
            changed = False
            for name in [
                n for n in self.imported if self.imported[n] != cards.get(n, {}).get("sha256")
            ]:
                self.pop(name, None)
                del self.imported[name]
                changed = True
                log.info("model %s withdrawn", name)
            for name, card in cards.items():
                if name in self.imported or card.get("task", "detect") != "detect":
                    continue
                try:
                    self[name] = self.load(self._info(card))
                except Exception as exc:  # one bad model must not stop the others
                    self.problems[name] = f"{type(exc).__name__}: {exc}"
                    log.exception("imported model %s did not load", name)
                    continue
                self.imported[name] = card["sha256"]
                self.problems.pop(name, None)
                changed = True
                log.info("imported model %s loaded", name)
            self.cache.prune(
                {s for c in cards.values() for s in (c["sha256"], c.get("onnx_sha256")) if s}
            )
            self._seen_version = version
            return changed

    def _info(self, card: dict[str, Any]) -> Any:
        weights = self.cache.ensure(self.catalog, card["sha256"], ".pt")
        onnx = card.get("onnx_sha256")
        onnx_path = self.cache.ensure(self.catalog, onnx, ".onnx") if onnx else None
        return model_info(card, weights, onnx_path)

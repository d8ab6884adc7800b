"""What a result records of the model that made it: one shape for every job (torch-free)."""

from __future__ import annotations

from typing import Any


def model_provenance(model: Any) -> dict[str, Any]:
    """Name, weights sha256, backend and device of a loaded detector or feature extractor."""
    return {
        "model": model.name,
        "sha256": model.info.sha256,
        "backend": model.backend,
        "device": model.device,
    }

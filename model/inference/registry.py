"""Which models exist: `<name>.pt` + `<name>.json` card pairs in the configured folders.

Torch-free on purpose: the HTTP process lists models and validates the `model` param from here,
by name only — a client never supplies a path, so no request can make us unpickle a file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    classes: list[str]
    imgsz: int
    weights: Path
    onnx: Path | None
    sha256: str

    def describe(self, default: str) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "classes": self.classes,
            "input_size": self.imgsz,
            "sha256": self.sha256,
            "default": self.name == default,
            "backends": ["torch", "onnx"] if self.onnx else ["torch"],
        }


@lru_cache(maxsize=64)
def _sha256(path: Path, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_card(card_path: Path) -> ModelInfo | None:
    try:
        card = json.loads(card_path.read_text())
        weights = card_path.parent / card.get("weights", f"{card_path.stem}.pt")
        if not weights.is_file():
            return None
        onnx = card_path.parent / card["onnx"] if card.get("onnx") else None
        return ModelInfo(
            name=card.get("name", card_path.stem),
            task=card.get("task", "detect"),
            classes=list(card["classes"]),
            imgsz=int(card["imgsz"]),
            weights=weights,
            onnx=onnx if onnx and onnx.is_file() else None,
            sha256=_sha256(weights, weights.stat().st_mtime_ns),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable card is not a model; it is simply not listed


def discover(dirs: list[Path]) -> dict[str, ModelInfo]:
    """All usable models by name; the first folder wins on a name clash."""
    found: dict[str, ModelInfo] = {}
    for folder in dirs:
        if not folder.is_dir():
            continue
        for card_path in sorted(folder.glob("*.json")):
            info = _load_card(card_path)
            if info is not None and info.name not in found:
                found[info.name] = info
    return found

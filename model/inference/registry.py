"""Which models exist: `<name>.pt` + `<name>.json` card pairs in the configured folders.

A card's `task` says what the model does: `detect` (a YOLO detector, the default) or `embed` (a
feature extractor for the similarity job: no classes; `format` says how to run it, see
model/jobs/similarity/embedders.py).

Torch-free on purpose: the HTTP process lists models and validates the `model` param from here,
by name only — a client never supplies a path, so no request can make us unpickle a file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

EMBED_FORMATS = ("ultralytics-backbone", "onnx", "torchscript")
# Card keys an embed model may set (how to feed it and pool its output; `link_cosine`: the
# cosine from which the cluster job links two shortlisted items on the embedding alone).
EMBED_OPTIONS = ("layers", "mean", "std", "resize", "pooling", "link_cosine")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    classes: list[str]
    imgsz: int
    weights: Path
    onnx: Path | None
    sha256: str
    # embed models: "ultralytics-backbone" | "onnx" | "torchscript", and the card's own options
    format: str = "ultralytics"
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def describe(self, default: str) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "classes": self.classes,
            "input_size": self.imgsz,
            "sha256": self.sha256,
            "default": self.name == default,
            "backends": self.backends,
        }

    @property
    def backends(self) -> list[str]:
        if self.format == "onnx":
            return ["onnx"]
        return ["torch", "onnx"] if self.onnx else ["torch"]


@lru_cache(maxsize=64)
def _sha256(path: Path, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _embed_options(card: dict[str, Any]) -> dict[str, Any]:
    """The card's embed options. A `link_cosine` that is no cosine in (0, 1] (a string, a
    bool, NaN; 0 or less would link any two items) makes the card unreadable, rather than fail
    or merge every cluster task later."""
    options = {k: v for k, v in card.items() if k in EMBED_OPTIONS}
    if "link_cosine" in options:
        value = options["link_cosine"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("link_cosine is not a number")
        if not 0.0 < value <= 1.0:  # NaN fails this too
            raise ValueError("link_cosine is not a cosine in (0, 1]")
        options["link_cosine"] = float(value)
    return options


def _load_card(card_path: Path) -> ModelInfo | None:
    try:
        card = json.loads(card_path.read_text())
        weights = card_path.parent / card.get("weights", f"{card_path.stem}.pt")
        if not weights.is_file():
            return None
        onnx = card_path.parent / card["onnx"] if card.get("onnx") else None
        task = card.get("task", "detect")
        if task == "embed":
            fmt = card.get("format") or ("onnx" if weights.suffix == ".onnx" else "torchscript")
            if fmt not in EMBED_FORMATS:
                return None
        else:
            fmt = "ultralytics"
        return ModelInfo(
            name=card.get("name", card_path.stem),
            task=task,
            # A feature extractor has no classes; a detector without them is a broken card.
            classes=list(card.get("classes", [])) if task == "embed" else list(card["classes"]),
            imgsz=int(card["imgsz"]),
            weights=weights,
            onnx=onnx if onnx and onnx.is_file() else None,
            sha256=_sha256(weights, weights.stat().st_mtime_ns),
            format=fmt,
            options=_embed_options(card),
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

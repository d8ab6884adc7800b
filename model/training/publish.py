"""Publishing a trained model: the seam between the train job and the model store.

`Publisher` is the small interface the train job needs. `FolderPublisher` is the one this
branch ships: it writes `<name>-<sha12>.pt` and then `<name>.json` into the last folder of
`models.dirs` (var/models), each by an atomic rename, the card last: the registry lists a model
only once its card names weights that exist, so a crash at any point leaves either no model or a
whole one, never half of one. The model store of issue 23 (content-addressed blobs in Redis
that every worker host picks up) replaces it behind the same interface.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

from model.inference.registry import discover

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # never a path: no dot, no slash
_NAME = re.compile(NAME_PATTERN)


class Publisher(Protocol):
    def exists(self, name: str) -> bool: ...

    def publish(self, name: str, weights: Path, sha256: str, card: dict[str, Any]) -> None: ...


def _replace_atomically(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)


class FolderPublisher:
    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.folder = dirs[-1]

    def exists(self, name: str) -> bool:
        return name in discover(self.dirs)

    def publish(self, name: str, weights: Path, sha256: str, card: dict[str, Any]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid model name {name!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = f"{name}-{sha256[:12]}.pt"  # a new version never overwrites loaded weights
        _replace_atomically(weights, self.folder / stored)
        card_tmp = self.folder / f".{name}.json.tmp"
        card_tmp.write_text(json.dumps({**card, "name": name, "weights": stored}, indent=1))
        os.replace(card_tmp, self.folder / f"{name}.json")

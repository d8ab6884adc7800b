"""Periodic clean-up that keeps disk and Redis use bounded (run by the worker's reaper thread).

Records and results expire by Redis TTL on their own; what is left behind is upload folders of
tasks that never ran to an end (a crash between saving the upload and queueing, a lost worker)
and index entries pointing at expired records.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from model.store import TaskStore

# A folder this fresh may belong to a submit still in progress (uploads are saved first).
MIN_ORPHAN_AGE_S = 600


def purge_orphan_uploads(
    store: TaskStore,
    uploads_root: Path,
    now: float | None = None,
    min_age_s: float = MIN_ORPHAN_AGE_S,
) -> list[str]:
    now = now or time.time()
    removed = []
    if not uploads_root.is_dir():
        return removed
    for folder in uploads_root.iterdir():
        if not folder.is_dir() or now - folder.stat().st_mtime < min_age_s:
            continue
        record = store.get(folder.name)
        if record is None or record.state.terminal:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def housekeeping(store: TaskStore, uploads_root: Path) -> None:
    purge_orphan_uploads(store, uploads_root)
    store.prune_indexes()

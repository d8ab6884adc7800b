"""Periodic clean-up that keeps Redis and disk use bounded (run by the worker's reaper thread).

Records and results expire by Redis TTL on their own, and so do uploads (bounded by their
task's lifetime); what is left behind sooner is uploads of tasks that ended without deleting
them (a crash between the end and the delete, a submit that died between saving its uploads
and queueing its task), folders of uploads kept on disk by releases before uploads moved to
Redis, and index entries pointing at expired records.
"""

from __future__ import annotations

import shutil
import time

from model.tasks.store import TaskStore
from model.uploads import UploadStore

# Uploads this fresh may belong to a submit still in progress (they are saved first).
MIN_ORPHAN_AGE_S = 600


def _ended(store: TaskStore, task_id: str) -> bool:
    record = store.get(task_id)
    return record is None or record.state.terminal


def purge_orphan_uploads(
    store: TaskStore,
    uploads: UploadStore,
    now: float | None = None,
    min_age_s: float = MIN_ORPHAN_AGE_S,
) -> list[str]:
    """Delete the uploads (Redis keys, legacy folders) of tasks that are gone or have ended;
    returns their task ids."""
    now = now or time.time()
    removed = []
    for task_id, keys in uploads.stored().items():
        if _ended(store, task_id) and uploads.idle_s(keys) >= min_age_s:
            uploads.delete(keys)
            removed.append(task_id)
    for task_id, reserved_at in uploads.reservations().items():
        # A reservation its task's end did not give back (a crash in between), or whose
        # submit died before the task was created.
        if now - reserved_at >= min_age_s and _ended(store, task_id) and uploads.release(task_id):
            removed += [] if task_id in removed else [task_id]
    for folder in uploads.legacy_folders():
        if now - folder.stat().st_mtime >= min_age_s and _ended(store, folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def housekeeping(store: TaskStore, uploads: UploadStore) -> None:
    purge_orphan_uploads(store, uploads)
    store.prune_indexes()

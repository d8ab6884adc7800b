"""Uploaded files of a task, kept under <data_dir>/uploads/<task_id>/ until the task ends."""

from __future__ import annotations

import shutil
from pathlib import Path


def task_dir(uploads_root: Path, task_id: str) -> Path:
    return uploads_root / task_id


def path_for(uploads_root: Path, task_id: str, index: int, suffix: str) -> Path:
    """Where a task's upload number `index` is kept."""
    return task_dir(uploads_root, task_id) / f"{index:05d}{suffix}"


def save(uploads_root: Path, task_id: str, index: int, suffix: str, data: bytes) -> Path:
    path = path_for(uploads_root, task_id, index, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def discard(uploads_root: Path, task_id: str) -> None:
    """Uploads are inputs only: once the task has ended they are deleted to bound disk use."""
    shutil.rmtree(task_dir(uploads_root, task_id), ignore_errors=True)

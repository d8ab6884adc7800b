"""The task record as Python reads it (`TaskRecord.from_hash`), and the bounds on what it keeps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model.tasks.states import State

# Lists in a status (provenance: canvases skipped, manifest problems...) beyond this many
# entries are cut, with their full length beside them; /result has them up to DETAIL_LIST_CAP.
STATUS_LIST_CAP = 100
DETAIL_LIST_CAP = 1000
# Bytes of provenance a task keeps: in its record (read by every /status) and beside it (read by
# /result). Lists are cut shorter until it fits; past that only its scalar fields are kept.
RECORD_PROVENANCE_BYTES = 64 * 1024
DETAIL_PROVENANCE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TaskRecord:
    id: str
    owner: str
    type: str
    state: State
    spec: dict[str, Any]
    created_at: float
    timeout_s: float
    total: int
    # The Celery queue it was sent to (tasks naming a model go to that model's queue); None for
    # tasks queued by releases with one queue.
    queue: str | None = None
    lane: int = 0  # its place in the queue's fair sharing between keys (model/tasks/fairness.py)
    done: int = 0
    failed: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None  # a task redelivered after a crash starts again
    finished_at: float | None = None
    expires_at: float | None = None
    cancel_requested_at: float | None = None
    worker_pid: int | None = None
    attempt: int = 0  # attempts started (model/lifecycle/attempts.py)
    holder: str | None = None  # the token of the attempt holding it while it runs
    error_code: str | None = None
    error_message: str | None = None
    provenance: dict[str, Any] | None = None
    # Result fields of a whole task beside its items (similarity: the compared pairs); kept in
    # the record's hash, so they expire with it.
    summary: dict[str, Any] | None = None
    # Where the task's events go: {"url", "events", "progress_interval_s"} (model/webhooks/).
    webhook: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> TaskRecord:
        def num(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        return cls(
            id=data["id"],
            owner=data["owner"],
            type=data["type"],
            state=State(data["state"]),
            spec=json.loads(data.get("spec") or "{}"),
            created_at=float(data["created_at"]),
            timeout_s=float(data["timeout_s"]),
            total=int(data.get("total") or 0),
            queue=data.get("queue") or None,
            lane=int(data.get("lane") or 0),
            done=int(data.get("done") or 0),
            failed=int(data.get("failed") or 0),
            started_at=num("started_at"),
            attempt_started_at=num("attempt_started_at"),
            finished_at=num("finished_at"),
            expires_at=num("expires_at"),
            cancel_requested_at=num("cancel_requested_at"),
            worker_pid=int(data["worker_pid"]) if data.get("worker_pid") else None,
            attempt=int(data.get("attempt") or 0),
            holder=data.get("holder") or None,
            error_code=data.get("error_code") or None,
            error_message=data.get("error_message") or None,
            provenance=json.loads(data["provenance"]) if data.get("provenance") else None,
            summary=json.loads(data["summary"]) if data.get("summary") else None,
            webhook=json.loads(data["webhook"]) if data.get("webhook") else None,
        )


def summarise_lists(value: Any, cap: int) -> tuple[Any, bool]:
    """`value` with every list longer than `cap` cut to its first `cap` entries; a cut list
    under a dict key gets a `<key>_count` sibling with its full length. Returns (copy, cut?)."""
    if isinstance(value, list):
        parts = [summarise_lists(v, cap) for v in value[:cap]]
        return [p for p, _ in parts], len(value) > cap or any(c for _, c in parts)
    if not isinstance(value, dict):
        return value, False
    out: dict[str, Any] = {}
    cut_any = False
    for key, child in value.items():
        out[key], cut = summarise_lists(child, cap)
        if isinstance(child, list) and len(child) > cap and f"{key}_count" not in value:
            out[f"{key}_count"] = len(child)  # unless the producer counted it (more) already
        cut_any = cut_any or cut
    return out, cut_any


def bounded_json(value: dict[str, Any], caps: tuple[int, ...], budget: int) -> tuple[str, bool]:
    """JSON text of `value` within `budget` bytes: its lists cut to the first of `caps` that
    fits (summarise_lists); if none does, its scalar fields with `"truncated": true`, or that
    alone. Returns (text, whether anything was cut)."""
    for cap in caps:
        summary, cut = summarise_lists(value, cap)
        text = json.dumps(summary)
        if len(text.encode()) <= budget:
            return text, cut
    scalars = {k: v for k, v in value.items() if not isinstance(v, dict | list)}
    text = json.dumps({**scalars, "truncated": True})
    return (text if len(text.encode()) <= budget else '{"truncated": true}'), True

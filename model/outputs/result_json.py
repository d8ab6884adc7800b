"""The JSON result: every item (per canvas / image) and the provenance of the run."""

from __future__ import annotations

from typing import Any


def result_document(
    task_id: str,
    state: str,
    items: list[dict[str, Any]],
    provenance: dict[str, Any] | None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    ordered = sorted(items, key=lambda item: item["index"])
    return {
        "task_id": task_id,
        "state": state,
        "complete": state == "SUCCEEDED",
        "items": ordered,
        "provenance": provenance,
        "error": error,
    }

"""A task's states and the moves between them (checked atomically by the store's scripts)."""

from __future__ import annotations

from enum import StrEnum

DEFERRED = "deferred"  # what mark_running answers for a task whose key is at its running cap


class State(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (State.QUEUED, State.RUNNING)


# Where a task may go from each state; terminal states go nowhere. Every move below is checked
# against it atomically in Redis (a task is finished once even when the job, the reaper, Celery's
# failure signal and a DELETE race). RUNNING -> RUNNING: a task redelivered after a crash, once
# its attempt's lease is gone; RUNNING -> QUEUED: requeued because its worker died
# (model/lifecycle/attempts.py).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED, State.FAILED, State.TIMED_OUT}),
    State.RUNNING: frozenset(
        {
            State.QUEUED,
            State.RUNNING,
            State.SUCCEEDED,
            State.FAILED,
            State.TIMED_OUT,
            State.CANCELLED,
        }
    ),
}


def sources_of(target: State) -> list[State]:
    """The states a task may move to `target` from."""
    return [state for state, targets in TRANSITIONS.items() if target in targets]

"""Fair sharing between keys on the live stack (one task at a time): the order a real worker
starts tasks in follows the lanes (model/tasks/fairness.py), not only the order they were sent."""

from __future__ import annotations

from datetime import datetime

import pytest

from testkit.stack import Api, Stack, wait_ready

pytestmark = pytest.mark.live


def test_a_second_keys_task_starts_before_the_first_keys_backlog(
    stack: Stack, api: Api, other_api: Api
) -> None:
    # The worker stopped, so that every task waits and its lane alone decides the order.
    assert "stopped" in stack.ctl("stop", "worker")
    try:
        backlog = [api.submit_ok({"type": "noop"}) for _ in range(4)]
        alone = other_api.submit_ok({"type": "noop"})
        positions = [api.status(t).json()["queue_position"] for t in backlog]
        mine = other_api.status(alone).json()["queue_position"]
        assert positions[0] < mine < positions[1], (positions, mine)
    finally:
        assert "started" in stack.ctl("start", "worker")
    bodies = {t: api.wait(t) for t in backlog} | {alone: other_api.wait(alone)}
    assert {b["state"] for b in bodies.values()} == {"SUCCEEDED"}
    started = sorted(bodies, key=lambda t: datetime.fromisoformat(bodies[t]["started_at"]))
    assert started == [backlog[0], alone, *backlog[1:]], "bob's task waited behind alice's"
    wait_ready(stack)

"""Fair sharing of the workers between keys: lanes of the Celery queue.

A task joins lane n when its key already has n tasks waiting, in any queue (n at most
LANES - 1; chosen and taken in one step with the task's creation, `model.tasks.store`), and workers
take lane 0 before lane 1, and so on, first come first served within a lane. So a key's first
waiting task competes with every other key's first, its second with their second: a key that
queues 500 tasks holds one place in each lane, and another key's single task waits behind at
most one task of each busy key, not behind all 500. Tasks that were started and requeued (their
worker died) go to lane 0: they have waited their turn already.

Lanes are Celery message priorities on the Redis transport (kombu: one list per priority step,
`<queue>\\x06\\x16<n>` for n > 0, popped lowest first), and the score of the task in its queue
index (`model.tasks.store`), so `queue_position` counts the tasks a worker will really take first.
"""

from __future__ import annotations

from kombu.transport.redis import Channel
from redis import Redis

LANES = 10
# A lane's place in the queue index's score: lane * LANE_SPAN + time queued. Times are ~1.8e9
# seconds, so every lane sorts after the one before it.
LANE_SPAN = 1e10


def lane_lists(queue: str) -> list[str]:
    """The Redis lists holding the Celery messages of `queue`, lane 0 first."""
    return [queue] + [f"{queue}{Channel.sep}{lane}" for lane in range(1, LANES)]


def waiting_messages(redis: Redis, queue: str) -> int:
    """Celery messages waiting in `queue`, every lane."""
    with redis.pipeline(transaction=False) as pipe:
        for name in lane_lists(queue):
            pipe.llen(name)
        return sum(pipe.execute())

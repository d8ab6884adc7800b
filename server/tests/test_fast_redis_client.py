"""Fast layer: the worker's Redis clients wait out a short outage, within a deadline, and tell an
outage from a refused password — against real redis-servers of their own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from model.redis_client import patient_redis, unreachable
from testkit.redis_server import redis_server
from testkit.stack import free_port


def test_worker_clients_ride_out_a_restart(tmp_path: Path) -> None:
    """They retry through an outage of about `redis.outage_patience_s`; a client made the plain
    way fails at once (what a running task met before)."""
    (tmp_path / "first").mkdir(), (tmp_path / "second").mkdir()
    with redis_server(tmp_path / "first") as port:
        url = f"redis://127.0.0.1:{port}/0"
        patient, impatient = patient_redis(url, 15), patient_redis(url, 0.2)
        plain = redis.Redis.from_url(url)
        assert patient.set("k", "1") and plain.ping()
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    with pytest.raises(redis.ConnectionError):
        impatient.ping()  # its patience ran out
    done = threading.Event()

    def restart() -> None:
        time.sleep(1.0)
        with redis_server(tmp_path / "second", port=port):
            done.wait(30)

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        # 1, not 2: it waited for the new server (no persistence: the key is gone).
        assert patient.incr("k") == 1
    finally:
        done.set()
        thread.join()


@contextmanager
def hanging_up_server() -> Iterator[tuple[int, list[int]]]:
    """Accepts connections and closes each at once (a Redis dying mid-reply, a tunnel that
    resets); yields its port and the count of connections accepted so far."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = [0]

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed: done
            while True:
                conn, _ = listener.accept()
                accepted[0] += 1
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        thread.join(timeout=5)


def test_the_patience_bounds_the_retries() -> None:
    """A connection that drops is tried again on the backoffs' schedule (0.05, 0.1, 0.2, 0.4 s...)
    until the patience is spent — a handful of tries for 1 s (fewer on a slow machine), then the
    error, which the runner reads as Redis out of reach."""
    with hanging_up_server() as (port, accepted):
        client = patient_redis(f"redis://127.0.0.1:{port}/0", 1.0)
        with pytest.raises(redis.ConnectionError) as raised:
            client.ping()
        assert unreachable(raised.value)
        assert 2 <= accepted[0] <= 8, accepted[0]


def test_a_refused_password_is_not_an_outage(tmp_path: Path) -> None:
    """redis-py makes it a ConnectionError; it is not retried, and a task meeting it fails
    instead of being requeued for ever."""
    with redis_server(tmp_path, password="right") as port:
        admin = redis.Redis(port=port, password="right")
        before = int(admin.info("stats")["total_connections_received"])
        client = patient_redis(f"redis://:wrong@127.0.0.1:{port}/0", 30)
        with pytest.raises(redis.AuthenticationError) as raised:
            client.ping()
        assert not unreachable(raised.value)
        after = int(admin.info("stats")["total_connections_received"])
        assert after - before == 1  # one try, no retry


def test_a_message_for_a_task_redis_cannot_start_goes_back_to_the_queue(tmp_path: Path) -> None:
    """Redis away when a message is delivered (past the clients' patience): acknowledging it
    would leave a QUEUED task with no message, so the worker rejects it back to the queue."""
    from celery.exceptions import Reject

    import model.worker as worker
    from model.jobs.contract import WorkerResources
    from model.settings import Settings
    from model.tasks.store import TaskStore
    from model.uploads import UploadStore

    gone = patient_redis(f"redis://127.0.0.1:{free_port()}/0", 0.2, decode_responses=True)
    resources = WorkerResources(
        settings=Settings(),
        redis=gone,
        store=TaskStore(gone, 3600, 7200),
        fetcher=None,
        uploads=UploadStore(gone, tmp_path),
    )
    saved, worker._resources = worker._resources, resources
    try:
        with pytest.raises(Reject) as raised:
            worker.run_job.run("a" * 32)
        assert raised.value.requeue and unreachable(raised.value.reason)
    finally:
        worker._resources = saved

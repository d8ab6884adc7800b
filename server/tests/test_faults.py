"""Crashes and restarts on a live stack of its own: nothing queued or running is lost.

Each durability setting is checked by its effect, not by reading the config:
acks_late + reject_on_worker_lost (a killed child's task is redelivered and resumes), prefetch 1
(waiting tasks stay in Redis, not in the worker), the lease of a running task (a task whose whole
worker died comes back once its lease lapses, long before the visibility timeout), Redis AOF
(queued tasks survive a Redis restart, and so do running ones). The worker runs two tasks at
once here. Several hosts: test_scale_out.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests

from model.jobs.registry import JOBS
from model.keyspace import FETCH_SLOTS_PREFIX
from model.sources.host_slots import LEASE_S
from model.tasks.fairness import waiting_messages
from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.iiif_server import IiifServer, Rule
from testkit.live import starts_processes
from testkit.stack import TERMINAL, Api, Stack, start_stack

pytestmark = pytest.mark.live

KILLS = 20
TIMEOUT_MAX_S = 90
GRACE_S = 2
VISIBILITY_MARGIN_S = 6
VISIBILITY_S = TIMEOUT_MAX_S + GRACE_S + VISIBILITY_MARGIN_S
LOST_GRACE_S = 10
OUTAGE_PATIENCE_S = 2  # a restart (about a second) is ridden out; a longer outage is not


@pytest.fixture(scope="module")
@starts_processes
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The visibility timeout follows the longest limit of any job type: bound every one.
    limits = {
        f"SCRIPTORIUM_JOBS__{name.upper()}__{field}": str(TIMEOUT_MAX_S)
        for name in JOBS
        for field in ("TIMEOUT_DEFAULT_S", "TIMEOUT_MAX_S")
    }
    stack = start_stack(
        tmp_path_factory.mktemp("faults"),
        **limits,
        SCRIPTORIUM_CANCEL__GRACE_S=str(GRACE_S),
        SCRIPTORIUM_WORKER__VISIBILITY_MARGIN_S=str(VISIBILITY_MARGIN_S),
        SCRIPTORIUM_WORKER__LOST_GRACE_S=str(LOST_GRACE_S),
        SCRIPTORIUM_REDIS__OUTAGE_PATIENCE_S=str(OUTAGE_PATIENCE_S),
        # Several tasks at once, as the default worker runs them: a kill or a restart hits
        # one task among others that go on.
        SCRIPTORIUM_WORKER__CONCURRENCY="2",
        # Every page is the same image: without this, cached detections finish tasks at once.
        SCRIPTORIUM_CACHE__TTL_S="0",
    )
    stack.create_key("faults", "--rate", "100000/second", "--max-queued", "100000")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(faulty: Stack) -> Api:
    return faulty.client(faulty.keys["faults"])


@pytest.fixture(scope="module")
def page_url(image_server: ImageServer, pages) -> str:
    return image_server.add("fault-page.jpg", jpeg_bytes(pages[1]))


def redis_client(stack: Stack) -> redis.Redis:
    return stack.redis()


def pool_child(stack: Stack, timeout_s: float = 60, task_id: str | None = None) -> int:
    """A prefork child of the worker (a process that runs tasks and holds the models): the one
    running `task_id` if given — with `worker.concurrency` children, any other may be idle."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if task_id is not None:
            pid = stack.task_process(task_id)
            if pid is not None:
                return pid
        elif children := stack.pool_children():
            return children[0]
        time.sleep(0.2)
    raise AssertionError(f"worker has no pool child{' running ' + task_id if task_id else ''}")


def listed_ids(api: Api) -> set[str]:
    ids: set[str] = set()
    offset: int | None = 0
    while offset is not None:
        page = api.request("GET", "/tasks", params={"offset": offset, "limit": 100}).json()
        ids |= {task["task_id"] for task in page["tasks"]}
        offset = page["next_offset"]
    return ids


def running_child(stack: Stack, bodies: list[dict[str, Any]]) -> int | None:
    """The pool child of the first of these tasks that is running in one now."""
    running = (stack.task_process(b["task_id"]) for b in bodies if b["state"] == "RUNNING")
    return next((pid for pid in running if pid is not None), None)


def check_complete(body: dict[str, Any]) -> None:
    """SUCCEEDED, every item exactly once."""
    assert body["state"] == "SUCCEEDED", (body["state"], body.get("error"))
    total = body["progress"]["total"]
    assert body["progress"] == {"done": total, "total": total, "failed": 0}
    indices = [item["index"] for item in body["result"]["items"]]
    assert sorted(indices) == list(range(total)), indices


def test_prefetch_one_leaves_waiting_tasks_in_redis(faulty: Stack, client: Api, page_url) -> None:
    # One running task per pool child: the worker is full.
    slots = faulty.settings().worker.concurrency
    running = [
        client.submit_ok({"type": "detect", "input": {"image_urls": [page_url] * 60}})
        for _ in range(slots)
    ]
    for task_id in running:
        client.wait(task_id, {"RUNNING"})
    waiting = [
        client.submit_ok({"type": "detect", "input": {"image_urls": [page_url]}}) for _ in range(3)
    ]
    time.sleep(1)  # give a greedy worker the time to reserve them
    assert waiting_messages(redis_client(faulty), "scriptorium") == 3
    for task_id in [*running, *waiting]:
        client.terminate(task_id)
    for task_id in [*running, *waiting]:
        client.wait(task_id)


def test_killing_the_pool_child_twenty_times_loses_nothing(
    faulty: Stack, client: Api, page_url: str
) -> None:
    def submit() -> str:
        return client.submit_ok({"type": "detect", "input": {"image_urls": [page_url] * 12}})

    task_ids = [submit() for _ in range(KILLS)]
    kills, progress_at_last_kill = 0, -1
    deadline = time.monotonic() + 600
    while kills < KILLS and time.monotonic() < deadline:
        bodies = [client.status(t).json() for t in task_ids]
        progress = sum(b["progress"]["done"] for b in bodies)
        if all(b["state"] in TERMINAL for b in bodies):
            task_ids.append(submit())  # finished before 20 kills: more work to kill
        # Kill only mid-task: the child running a task that (in this child) stored progress.
        elif progress > progress_at_last_kill and (victim := running_child(faulty, bodies)):
            os.kill(victim, signal.SIGKILL)
            kills += 1
            progress_at_last_kill = progress
        time.sleep(0.1)
    assert kills == KILLS
    for task_id in task_ids:
        check_complete(client.wait(task_id, timeout_s=300))
    assert "RUNNING" in faulty.ctl("status", "worker")


@pytest.fixture
def slow_host(tmp_path: Path, pages) -> Iterator[list[str]]:
    """120 pages behind a host that answers in 300 ms: a task holds some of its places."""
    server = IiifServer(tmp_path)
    data = jpeg_bytes(pages[1])
    urls = []
    for i in range(120):
        urls.append(server.add(f"p{i}.jpg", data))
        server.rules[f"/p{i}.jpg"] = Rule(delay_s=0.3)
    yield urls
    server.stop()


def test_task_of_a_dead_worker_comes_back_once_its_lease_lapses(
    faulty: Stack, client: Api, slow_host: list[str]
) -> None:
    pages = len(slow_host)
    task_id = client.submit_ok({"type": "detect", "input": {"image_urls": slow_host}})
    client.wait(task_id, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 3)
    main = faulty.program_pid("worker")
    children = faulty.pool_children()
    places = FETCH_SLOTS_PREFIX + urlsplit(slow_host[0]).netloc
    deadline = time.monotonic() + 30  # killed while requests hold places (inference is slower)
    while not redis_client(faulty).zcard(places):
        assert time.monotonic() < deadline, "the task never held a place at the host"
        time.sleep(0.01)
    killed_at = time.monotonic()
    for child in children:  # an orphaned child would finish the task before the timeout
        os.kill(child, signal.SIGKILL)
    os.kill(main, signal.SIGKILL)  # the whole worker dies: nobody rejects the message
    # The host places its requests held die with it, one short lease later (host_slots.py):
    # not after the longest a request may take (130 s), which held up the requeued task.
    held = redis_client(faulty).zrange(places, 0, -1, withscores=True)
    now_ms = redis_client(faulty).time()[0] * 1000
    assert held, "the killed worker held none of the host's places"
    assert max(ends for _, ends in held) <= now_ms + LEASE_S * 1000 + 1000, held
    at_kill = client.status(task_id).json()
    assert at_kill["state"] == "RUNNING" and at_kill["progress"]["done"] < pages  # mid-task
    new_main = main
    while new_main == main and time.monotonic() - killed_at < 30:
        time.sleep(0.2)
        try:
            new_main = faulty.program_pid("worker")
        except ValueError:
            continue
    assert new_main != main, "supervisord did not restart the worker"
    # Nobody renews its lease: once it lapses the (new) worker's reaper requeues it, long before
    # the visibility timeout; no second copy ran meanwhile (the lease was still held).
    record = f"sc:task:{task_id}"
    while redis_client(faulty).hget(record, "attempt") == "1":  # the second attempt starts
        assert time.monotonic() - killed_at < VISIBILITY_S, "not back before the visibility timeout"
        time.sleep(0.2)
    came_back_s = time.monotonic() - killed_at
    body = client.wait(task_id, timeout_s=VISIBILITY_S + 120)
    check_complete(body)
    assert LOST_GRACE_S - 4 <= came_back_s < LOST_GRACE_S + 15, came_back_s
    assert body["progress"]["done"] == pages
    print(
        f"whole worker killed: back after {came_back_s:.1f} s, finished after "
        f"{time.monotonic() - killed_at:.1f} s (lost_grace_s {LOST_GRACE_S})"
    )


def test_queued_tasks_survive_a_redis_restart(faulty: Stack, client: Api, page_url: str) -> None:
    assert "stopped" in faulty.ctl("stop", "worker")
    task_ids = [
        client.submit_ok({"type": "detect", "input": {"image_urls": [page_url]}}) for _ in range(50)
    ]
    time.sleep(1.5)  # appendfsync everysec
    assert "started" in faulty.ctl("restart", "redis")
    assert "started" in faulty.ctl("start", "worker")
    for task_id in task_ids:
        check_complete(client.wait(task_id, timeout_s=300))


def test_killing_gunicorn_workers_loses_no_task(faulty: Stack, page_url: str) -> None:
    api = faulty.client(faulty.keys["faults"])
    ids_before = listed_ids(api)
    results: dict[str, str] = {}
    thread_errors: list[BaseException] = []
    retries = {"count": 0}
    stop = threading.Event()

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        """A careful client: retries a dropped connection (same Idempotency-Key) for 30 s."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                resp = api.request(method, path, **kwargs)
                if resp.status_code not in (502, 503):
                    return resp
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                pass  # dropped before or while the answer came: retried, same Idempotency-Key
            retries["count"] += 1
            time.sleep(0.2)
        raise AssertionError(f"{method} {path} kept failing")

    def submitter() -> None:
        try:
            submit_until_stopped()
        except BaseException as exc:  # noqa: BLE001 - re-raised below: a dead thread fails the test
            thread_errors.append(exc)

    def submit_until_stopped() -> None:
        while not stop.is_set():
            key = uuid.uuid4().hex
            resp = call(
                "POST",
                "/task",
                headers={"Idempotency-Key": key},
                json={"type": "detect", "input": {"image_urls": [page_url]}},
            )
            assert resp.status_code == 202, resp.text
            results[key] = resp.json()["task_id"]
            call("GET", f"/status/{results[key]}")

    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            master = faulty.program_pid("gunicorn")
            children = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True
            ).stdout.split()
            os.kill(int(children[0]), signal.SIGKILL)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread_errors, thread_errors
    assert len(results) >= 5
    assert len(set(results.values())) == len(results)  # one task per submit, no duplicates
    for task_id in results.values():
        check_complete(api.wait(task_id, timeout_s=300))
    print(f"gunicorn kills: 3, client retries: {retries['count']}, tasks: {len(results)}")
    # No retried submit created a second task.
    extra = listed_ids(api) - ids_before - set(results.values())
    details = [api.status(t).json() for t in extra]
    assert not extra, f"tasks nobody was told about: {details}"


def two_tasks_under_way(client: Api, page_url: str, pages: int) -> list[str]:
    """Two tasks of `pages` pages, both running with a page stored and on disk."""
    task_ids = [
        client.submit_ok({"type": "detect", "input": {"image_urls": [page_url] * pages}})
        for _ in range(2)
    ]
    for task_id in task_ids:
        client.wait(task_id, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 1)
    time.sleep(1.5)  # appendfsync everysec: what was written is on disk
    return task_ids


def test_running_tasks_survive_a_redis_restart(faulty: Stack, client: Api, page_url: str) -> None:
    task_ids = two_tasks_under_way(client, page_url, 200)
    before = [client.status(task_id).json() for task_id in task_ids]
    assert "started" in faulty.ctl("restart", "redis")
    # Both were mid-task when Redis went away (else this tests nothing).
    assert all(b["state"] == "RUNNING" and b["progress"]["done"] < 200 for b in before), [
        (b["state"], b["progress"]) for b in before
    ]
    for task_id in task_ids:
        check_complete(client.wait(task_id, timeout_s=300))


def test_running_tasks_come_back_after_redis_is_away_longer_than_the_workers_wait(
    faulty: Stack, client: Api, page_url: str
) -> None:
    """Past `redis.outage_patience_s` a running task stops (it cannot write) but is not failed:
    its lease lapses and it is requeued once Redis is back, and resumes after its items."""
    task_ids = two_tasks_under_way(client, page_url, 120)
    assert "stopped" in faulty.ctl("stop", "redis")
    # Away until both attempts gave up (each call waits out the patience; metrics calls that
    # cannot be recorded are skipped after it, so the first write that must happen fails later).
    left = [
        faulty.log_lines("worker", f"task {task_id}: Redis unreachable; left to be requeued", 1, 60)
        for task_id in task_ids
    ]
    assert "started" in faulty.ctl("start", "redis")
    assert all(left), faulty.log("worker")[-3000:]
    for task_id in task_ids:
        check_complete(client.wait(task_id, timeout_s=300))

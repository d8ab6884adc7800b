"""Tasks run side by side (`worker.concurrency` prefork children, each with the models): on a
live stack of its own with two children, against local image hosts that answer slowly.

Two tasks from two slow hosts progress at the same time, in two processes, and each host still
sees at most `fetch.per_host_concurrency` requests at once — two tasks reading one host share
it (places in Redis); a cancel of one leaves the other alone; a one-page task never waits
behind a long one; killing the child of one of two running tasks loses nothing and does not
disturb the other.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from model import settings as settings_module
from model.settings import Settings
from server.tests.conftest import jpeg_bytes
from server.tests.test_faults import check_complete, pool_child
from testkit.live import starts_processes
from testkit.stack import TERMINAL, Api, Stack, start_stack

CHILDREN = 2
PER_HOST = 4
LATENCY_S = 0.4  # per request: 60 pages take at least 60 / PER_HOST * LATENCY_S = 6 s
PAGES = 60


class SlowHost:
    """One image, served under any path after `latency_s`: a library's server far away. Counts
    the requests in flight at once (the worker's per-host limit must hold)."""

    def __init__(self, data: bytes, latency_s: float) -> None:
        self.data, self.latency_s = data, latency_s
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = self.requests = 0
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with host.lock:
                    host.inflight += 1
                    host.requests += 1
                    host.max_inflight = max(host.max_inflight, host.inflight)
                try:
                    time.sleep(host.latency_s)
                    # Done with it: counted out before the answer goes back, so a client that
                    # has read the answer and sends its next request is never counted twice.
                    # (So a place given back before the body is read would go unseen here;
                    # the bodies are small, and test_fast_host_slots counts at arrival.)
                    with host.lock:
                        host.inflight -= 1
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(host.data)))
                    self.end_headers()
                    self.wfile.write(host.data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a cancelled task closed its connection

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def detect(self, client: Api, count: int, name: str) -> str:
        """A detect task of `count` pages of this host (URLs named after `name`): its id."""
        urls = [f"{self.url}/{name}.jpg?page={i}" for i in range(count)]
        return client.submit_ok({"type": "detect", "input": {"image_urls": urls}})

    def stop(self) -> None:
        self.server.shutdown()


def test_pool_processes_share_the_cores_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """inference.cpu_threads 0: each of the worker.concurrency processes gets its share, two
    at least (a lone task is not held to one core) but never more than the cores."""
    monkeypatch.setattr(settings_module, "available_cores", lambda: 2)
    assert Settings(worker={"concurrency": 4}).inference_threads() == 2  # this machine
    assert Settings(worker={"concurrency": 1}).inference_threads() == 2
    monkeypatch.setattr(settings_module, "available_cores", lambda: 1)
    assert Settings(worker={"concurrency": 4}).inference_threads() == 1
    monkeypatch.setattr(settings_module, "available_cores", lambda: 16)
    assert Settings(worker={"concurrency": 4}).inference_threads() == 4  # a GPU host
    assert Settings(inference={"cpu_threads": 3}).inference_threads() == 3  # as configured
    with pytest.raises(ValidationError):
        Settings(worker={"concurrency": 0})


@pytest.fixture(scope="module")
@starts_processes
def side_by_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("overlap"),
        SCRIPTORIUM_WORKER__CONCURRENCY=str(CHILDREN),
        SCRIPTORIUM_FETCH__PER_HOST_CONCURRENCY=str(PER_HOST),
    )
    stack.create_key("overlap", "--rate", "100000/second")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(side_by_side: Stack) -> Api:
    return side_by_side.client(side_by_side.keys["overlap"])


@pytest.fixture(scope="module")
def page_jpeg(pages) -> bytes:
    return jpeg_bytes(pages[0])


@pytest.fixture
def slow_hosts(page_jpeg: bytes) -> Iterator[list[SlowHost]]:
    hosts = [SlowHost(page_jpeg, LATENCY_S), SlowHost(page_jpeg, LATENCY_S)]
    yield hosts
    for host in hosts:
        host.stop()


def both_progressing(client: Api, task_ids: list[str], timeout_s: float = 120) -> list[dict]:
    """Poll until one round of status reads shows every task RUNNING with pages done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        bodies = [client.status(t).json() for t in task_ids]
        if all(b["state"] == "RUNNING" and b["progress"]["done"] > 0 for b in bodies):
            return bodies
        assert not any(b["state"] in TERMINAL for b in bodies), bodies
        time.sleep(0.1)
    raise AssertionError(f"the tasks never ran side by side: {bodies}")


def test_two_tasks_from_two_slow_hosts_progress_together_and_cancel_one(
    side_by_side: Stack, client: Api, slow_hosts: list[SlowHost]
) -> None:
    first, second = (
        host.detect(client, PAGES, name) for host, name in zip(slow_hosts, ("a", "b"), strict=True)
    )
    both_progressing(client, [first, second])
    # Two pool processes, each with the model: not one task after the other in one.
    assert pool_child(side_by_side, task_id=first) != pool_child(side_by_side, task_id=second)
    assert client.terminate(first).status_code == 202
    cancelled = client.wait(first, timeout_s=30)
    assert cancelled["state"] == "CANCELLED"
    assert 1 <= cancelled["progress"]["done"] < PAGES
    assert len(cancelled["result"]["items"]) == cancelled["progress"]["done"]
    ended = client.wait(second, timeout_s=180)
    check_complete(ended)  # the other one went on: every page, once
    assert (
        ended["result"]["provenance"]["worker_pid"]
        != cancelled["result"]["provenance"]["worker_pid"]
    )
    # Side by side, yet each host saw no more requests at once than the per-host limit.
    assert all(1 <= host.max_inflight <= PER_HOST for host in slow_hosts), [
        h.max_inflight for h in slow_hosts
    ]


def test_two_tasks_reading_one_host_keep_to_its_limit_together(
    client: Api, slow_hosts: list[SlowHost]
) -> None:
    host = slow_hosts[0]
    tasks = [host.detect(client, PAGES, name) for name in ("one", "two")]
    both_progressing(client, tasks)
    # Long enough for each process's own limit to reach PER_HOST (slow start: 1, 2, 4).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [client.status(t).json()["progress"]["done"] for t in tasks]
        if min(done) >= 12:
            break
        time.sleep(0.2)
    # Two pool processes, each allowed PER_HOST: together still PER_HOST, not twice that. (Read
    # before the cancels: a cancelled request's slot is free at once, while the host may still
    # be working on it.)
    most = host.max_inflight
    for task_id in tasks:
        assert client.terminate(task_id).status_code == 202
        client.wait(task_id, timeout_s=30)
    assert most == PER_HOST, most


def test_a_small_task_does_not_wait_behind_a_big_one(client: Api, page_jpeg: bytes) -> None:
    fast = SlowHost(page_jpeg, 0.0)
    try:
        big = fast.detect(client, 300, "big")
        client.wait(big, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 2)
        small = fast.detect(client, 1, "small")
        done = client.wait(small, timeout_s=60)
        big_then = client.status(big).json()
        assert done["state"] == "SUCCEEDED" and done["progress"]["done"] == 1
        assert big_then["state"] == "RUNNING", big_then["state"]
        assert big_then["progress"]["done"] < 300
        assert client.terminate(big).status_code == 202
        assert client.wait(big, timeout_s=30)["state"] == "CANCELLED"
    finally:
        fast.stop()


def test_killing_the_child_of_one_of_two_running_tasks_loses_nothing(
    side_by_side: Stack, client: Api, slow_hosts: list[SlowHost]
) -> None:
    victim, bystander = (
        host.detect(client, PAGES, name)
        for host, name in zip(slow_hosts, ("victim", "bystander"), strict=True)
    )
    both_progressing(client, [victim, bystander])
    killed = pool_child(side_by_side, task_id=victim)
    spared = pool_child(side_by_side, task_id=bystander)
    assert killed != spared
    os.kill(killed, signal.SIGKILL)  # acks_late + reject_on_worker_lost: it comes back at once
    ends = [client.wait(t, timeout_s=240) for t in (victim, bystander)]
    for body in ends:
        check_complete(body)  # SUCCEEDED, every page reported exactly once
    victim_end, bystander_end = ends
    assert victim_end["result"]["provenance"]["resumed_after"] >= 1
    assert victim_end["result"]["provenance"]["worker_pid"] != killed
    # The other task never noticed: same process from start to end, nothing to resume.
    assert bystander_end["result"]["provenance"]["worker_pid"] == spared
    assert bystander_end["result"]["provenance"]["resumed_after"] == 0
    assert spared in side_by_side.pool_children()


def test_a_key_at_its_running_cap_leaves_a_worker_for_other_keys(
    side_by_side: Stack, client: Api, page_jpeg: bytes
) -> None:
    """A key allowed one running task (keys create --max-running 1; worker.key_running_max by
    default) sends two long ones: the second waits, QUEUED, while the first runs, and another
    key's one-page task takes the free child at once (before, the key held both children and
    the other task waited for one of them to end)."""
    capped = side_by_side.client(
        side_by_side.create_key("capped", "--rate", "100000/second", "--max-running", "1")
    )
    slow = SlowHost(page_jpeg, LATENCY_S)
    try:
        first, second = (slow.detect(capped, PAGES, name) for name in ("first", "second"))
        capped.wait(first, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 1)
        time.sleep(1)  # long enough for a free child to take the second, were it allowed to
        small = slow.detect(client, 1, "small")
        assert client.wait(small, timeout_s=60)["state"] == "SUCCEEDED"
        assert capped.status(first).json()["state"] == "RUNNING"
        assert capped.status(second).json()["state"] == "QUEUED"
        ends = [capped.wait(t, timeout_s=240) for t in (first, second)]
    finally:
        slow.stop()
    for body in ends:
        check_complete(body)
    gap = datetime.fromisoformat(ends[1]["started_at"]) - datetime.fromisoformat(
        ends[0]["finished_at"]
    )
    print(f"the second task started {gap.total_seconds():.2f} s after the first ended")
    assert gap.total_seconds() >= 0  # never both running

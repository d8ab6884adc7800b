"""Webhooks: `POST /task` with `webhook: {url, events}`; deliveries signed as Standard Webhooks,
checked here with an independent implementation (the `standardwebhooks` package); at-least-once
with backoff; the SSRF guard; every attempt in the task's status.

The session stack runs with short backoff, attempt timeout and retry window
(conftest.WEBHOOK_TEST_SETTINGS): 0.5 s doubling to 2 s, 1 s per attempt, 6 s in all.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook as Verifier

from model.keyspace import WEBHOOK_MSG_PREFIX
from model.settings import Settings
from model.tasks.states import State
from model.tasks.store import TaskStore
from model.webhooks import events
from model.webhooks.events import Outbox
from server.tests.conftest import WEBHOOK_TEST_SETTINGS, ImageServer, jpeg_bytes
from testkit.stack import PROJECT_ROOT, Api, Stack

BACKOFF_S = float(WEBHOOK_TEST_SETTINGS["SCRIPTORIUM_WEBHOOKS__BACKOFF_INITIAL_S"])
ATTEMPT_S = float(WEBHOOK_TEST_SETTINGS["SCRIPTORIUM_WEBHOOKS__TIMEOUT_S"])
RETRY_FOR_S = float(WEBHOOK_TEST_SETTINGS["SCRIPTORIUM_WEBHOOKS__RETRY_FOR_S"])


# --- a receiver: answers each path as a test scripts it, keeps what it got ----------------------


Behaviour = Callable[[int], tuple[int, float]]  # (delivery number) -> (status, delay before)


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.received: dict[str, list[tuple[float, dict[str, str], bytes]]] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    got = outer.received.setdefault(self.path, [])
                    got.append(
                        (time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    number = len(got)
                behaviour = outer.behaviours.get(self.path, lambda _n: (204, 0.0))
                status, delay = behaviour(number)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", f"{outer.url}/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hook(self, behaviour: Behaviour | None = None) -> str:
        """A fresh path (one per test), answered by `behaviour` (default: 204)."""
        path = f"/hook/{uuid.uuid4().hex[:8]}"
        if behaviour is not None:
            self.behaviours[path] = behaviour
        return self.url + path

    def got(self, url: str) -> list[tuple[float, dict[str, str], bytes]]:
        with self._lock:
            return list(self.received.get(url.removeprefix(self.url), []))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def secret(stack: Stack) -> str:
    """alice's webhook secret (the session `api` fixture is alice's key)."""
    result = stack.cli("keys", "webhook-secret", "alice")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_for(check: Callable[[], Any], timeout_s: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def deliveries(api: Api, task_id: str) -> list[dict[str, Any]]:
    return api.status(task_id).json()["webhook"]["deliveries"]


def settled(api: Api, task_id: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The task's delivery attempts once the last one is final (no retry pending)."""

    def final() -> list[dict[str, Any]] | None:
        found = deliveries(api, task_id)
        done = found and found[-1]["next_retry_at"] is None
        return found if done else None

    return wait_for(final, timeout_s, f"the webhook deliveries of {task_id} to settle")


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The body, verified by the standardwebhooks package (raises if the signature is wrong)."""
    return Verifier(secret).verify(body, headers)


def noop_with(api: Api, webhook: dict[str, Any]) -> str:
    return api.submit_ok({"type": "noop", "webhook": webhook})


def test_the_webhooks_worker_runs_beside_the_inference_worker(stack: Stack) -> None:
    status = stack.ctl("status", "webhooks")
    assert "RUNNING" in status, status
    log = stack.log("webhooks")
    assert "scriptorium.webhooks" in log and "scriptorium.deliver_webhook" in log
    assert "scriptorium.run_job" not in log  # it consumes its own queue only
    assert "concurrency: 2 (prefork)" in log  # webhooks.concurrency (2 in test stacks)


# --- refused at submit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("webhook", "code", "says"),
    [
        ({"url": "http://127.0.0.2:8080/hook"}, "webhook_refused", "127.0.0.2 is not a public"),
        ({"url": "https://10.1.2.3/hook"}, "webhook_refused", "10.1.2.3 is not a public"),
        (
            {"url": "http://169.254.169.254/latest/meta-data"},
            "webhook_refused",
            "169.254.169.254 is not a public",
        ),
        # Numeric spellings the resolver takes as they are (no DNS lookup); this stack allows
        # 127.0.0.1 itself (the test image servers), not 127.0.0.2.
        ({"url": "http://2130706434/hook"}, "webhook_refused", "(127.0.0.2) is not a public"),
        ({"url": "http://0x7f000002/hook"}, "webhook_refused", "(127.0.0.2) is not a public"),
        ({"url": "http://127.2:8080/hook"}, "webhook_refused", "(127.0.0.2) is not a public"),
        ({"url": "http://0251.0376.0251.0376/"}, "webhook_refused", "(169.254.169.254) is not"),
        ({"url": "ftp://example.org/hook"}, "invalid_request", "webhook.url"),
        ({"url": "https://example.org/h", "events": []}, "invalid_request", "webhook.events"),
        (
            {"url": "https://example.org/h", "events": ["completed", "completed"]},
            "invalid_request",
            "once each",
        ),
        ({"url": "https://example.org/h", "events": ["finished"]}, "invalid_request", "events"),
        (
            {"url": "https://example.org/h", "events": ["progress"], "progress_interval_s": 0.5},
            "invalid_request",
            "at most every 1 s",
        ),
        ({"url": "https://example.org/h", "secret": "x"}, "invalid_request", "secret"),
    ],
)
def test_refused_at_submit(api: Api, secret: str, webhook: dict, code: str, says: str) -> None:
    before = api.request("GET", "/tasks").json()["total"]
    resp = api.submit({"type": "noop", "webhook": webhook})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and says in error["message"], error
    assert api.request("GET", "/tasks").json()["total"] == before


def test_a_key_without_a_webhook_secret_is_told_how_to_get_one(other_api: Api) -> None:
    resp = other_api.submit({"type": "noop", "webhook": {"url": "https://example.org/hook"}})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "webhook_secret_missing"
    assert "keys webhook-secret bob" in error["message"]


# --- delivered, signed, once ------------------------------------------------------------------


def test_completed_is_signed_and_delivered_once_per_task(
    api: Api, secret: str, receiver: Receiver, image_server: ImageServer, pages
) -> None:
    hook = receiver.hook()
    succeeded = noop_with(api, {"url": hook})
    # Another terminal state, and the multipart form (the webhook as a JSON field).
    failed = api.submit_ok(
        {
            "type": "detect",
            "input": {"manifest_url": f"{image_server.url}/no-such-manifest.json"},
            "webhook": {"url": hook, "events": ["completed"]},
        }
    )
    uploaded = api.upload([("page.jpg", jpeg_bytes(pages[0]))], webhook=json.dumps({"url": hook}))
    assert uploaded.status_code == 202, uploaded.text
    uploaded_id = uploaded.json()["task_id"]
    ids = {succeeded: "SUCCEEDED", failed: "FAILED", uploaded_id: "SUCCEEDED"}
    for task_id, state in ids.items():
        assert api.wait(task_id)["state"] == state
    wait_for(lambda: len(receiver.got(hook)) >= 3, what="three deliveries")
    time.sleep(2)  # long enough for any duplicate to arrive

    by_id: dict[str, list[dict]] = {}
    for _, headers, body in receiver.got(hook):
        payload = verified(secret, headers, body)
        by_id.setdefault(headers["webhook-id"], []).append(payload)
        assert headers["webhook-signature"].startswith("v1,")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    # Once per task (a receiver dedupes by webhook-id: here nothing was even sent twice).
    assert len(by_id) == 3 and all(len(p) == 1 for p in by_id.values()), by_id
    payloads = {p[0]["data"]["task_id"]: p[0] for p in by_id.values()}
    assert set(payloads) == set(ids)
    for task_id, state in ids.items():
        payload = payloads[task_id]
        assert payload["type"] == "task.completed"
        assert payload["data"]["state"] == state
        assert payload["data"]["status_url"].endswith(f"/status/{task_id}")
        assert "items" not in json.dumps(payload)  # the event, never the result
    assert payloads[failed]["data"]["error"]["code"] == "manifest_unavailable"
    assert payloads[uploaded_id]["data"]["type"] == "detect"

    status = api.status(succeeded).json()["webhook"]
    assert status["url"] == hook and status["events"] == ["completed"]
    [attempt] = status["deliveries"]
    assert attempt["outcome"] == "delivered" and attempt["status_code"] == 204
    assert attempt["attempt"] == 1 and attempt["next_retry_at"] is None
    assert attempt["webhook_id"] == f"msg_{succeeded}_completed"
    assert api.status(api.submit_ok({"type": "noop"})).json()["webhook"] is None


def test_a_failing_receiver_is_retried_with_backoff(
    api: Api, secret: str, receiver: Receiver
) -> None:
    hook = receiver.hook(lambda n: (500, 0.0) if n <= 2 else (200, 0.0))
    task_id = noop_with(api, {"url": hook})
    attempts = settled(api, task_id)
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "delivered"], attempts
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    assert (
        attempts[0]["error"]["code"] == "http_status" and "500" in attempts[0]["error"]["message"]
    )
    assert attempts[0]["next_retry_at"] and attempts[1]["next_retry_at"]

    got = receiver.got(hook)
    assert len(got) == 3
    assert len({headers["webhook-id"] for _, headers, _ in got}) == 1  # one message, retried
    for _, headers, body in got:  # each attempt signed afresh, each verifies
        verified(secret, headers, body)
    times = [at for at, _, _ in got]
    first, second = times[1] - times[0], times[2] - times[1]
    assert first >= BACKOFF_S * 0.95, first
    assert second >= 2 * BACKOFF_S * 0.95 and second > first, (first, second)


def test_a_receiver_that_times_out_is_given_up_and_never_holds_up_tasks(
    api: Api, secret: str, receiver: Receiver
) -> None:
    hook = receiver.hook(lambda _n: (200, ATTEMPT_S + 2))
    task_id = noop_with(api, {"url": hook})
    wait_for(lambda: receiver.got(hook), what="the first attempt")
    # Deliveries have their own queue and processes: tasks run meanwhile.
    started = time.monotonic()
    others = [api.submit_ok({"type": "noop"}) for _ in range(3)]
    assert all(api.wait(other, timeout_s=30)["state"] == "SUCCEEDED" for other in others)
    assert time.monotonic() - started < 10

    attempts = settled(api, task_id, timeout_s=RETRY_FOR_S + 30)
    assert len(attempts) >= 2
    assert all(a["error"]["code"] == "timeout" for a in attempts), attempts
    assert all(a["status_code"] is None for a in attempts)
    assert all(a["duration_s"] < ATTEMPT_S + 1 for a in attempts), attempts
    assert [a["outcome"] for a in attempts] == ["failed"] * (len(attempts) - 1) + ["gave_up"]
    assert len(receiver.got(hook)) == len(attempts)


HANGING = 8


def test_one_keys_hanging_receiver_does_not_hold_up_another_keys_events(
    stack: Stack, api: Api, secret: str
) -> None:
    """Alice's receiver never answers: her attempts may hold one of the two delivery processes
    (webhooks.key_in_flight, below concurrency), not both; her other events wait their turn
    while another key's event goes by. (One FIFO before: it waited behind all of hers.)"""
    hanging, other = Receiver(), Receiver()  # hosts of their own: breakers are per host
    try:
        name = f"hooks-{uuid.uuid4().hex[:8]}"
        carol = stack.client(stack.create_key(name, "--rate", "100000/second"))
        assert stack.cli("keys", "webhook-secret", name).returncode == 0
        stuck = hanging.hook(lambda _n: (200, ATTEMPT_S + 2))
        for _ in range(HANGING):
            noop_with(api, {"url": stuck})
        wait_for(lambda: hanging.got(stuck), what="alice's first attempt")
        hook = other.hook()
        sent = time.monotonic()
        noop_with(carol, {"url": hook})
        [(delivered, _, _)] = wait_for(lambda: other.got(hook), what="carol's delivery")
        alices = len(hanging.got(stuck))
        print(f"carol's event after {delivered - sent:.2f} s; alice's attempts by then: {alices}")
        assert alices <= HANGING // 2, f"carol's event waited for {alices} of alice's attempts"
    finally:
        hanging.close()
        other.close()


def test_a_redirect_is_not_followed(api: Api, secret: str, receiver: Receiver) -> None:
    hook = receiver.hook(lambda _n: (302, 0.0))
    task_id = noop_with(api, {"url": hook})
    attempts = settled(api, task_id, timeout_s=RETRY_FOR_S + 30)
    assert attempts[0]["status_code"] == 302
    assert "redirects are not followed" in attempts[0]["error"]["message"]
    assert attempts[-1]["outcome"] == "gave_up"
    assert receiver.received.get("/elsewhere") is None


def test_a_private_address_is_refused_at_delivery(stack: Stack, api: Api, secret: str) -> None:
    """A host name is resolved at each attempt, where the guard refuses a private answer before
    connecting: the receiver listening there gets nothing, the reason is recorded, there is no
    retry. (Every spelling of an address is refused at submit already: the message's URL is
    rewritten while the webhooks worker is stopped, as a name whose DNS answer turned private.)"""
    private = Receiver("127.0.0.2")
    try:
        assert "stopped" in stack.ctl("stop", "webhooks")
        try:
            task_id = noop_with(api, {"url": "https://example.org/hook"})
            message = f"{WEBHOOK_MSG_PREFIX}msg_{task_id}_completed"
            wait_for(lambda: stack.redis().exists(message), what="the completed event")
            stack.redis().hset(message, "url", f"http://127.2:{private.port}/hook")
        finally:
            assert "started" in stack.ctl("start", "webhooks")
        [attempt] = settled(api, task_id, timeout_s=90)
        assert attempt["outcome"] == "refused" and attempt["status_code"] is None
        assert attempt["error"]["code"] == "blocked_address"
        assert "non-public address" in attempt["error"]["message"]
        time.sleep(1)
        assert deliveries(api, task_id) == [attempt]  # never retried
        assert private.received == {}  # never even connected to
    finally:
        private.close()


def test_progress_events_at_most_every_interval(
    api: Api, secret: str, receiver: Receiver, image_server: ImageServer, pages
) -> None:
    urls = [image_server.add(f"wh-{i}.jpg", jpeg_bytes(p)) for i, p in enumerate(pages)]
    hook = receiver.hook()
    webhook = {"url": hook, "events": ["progress", "completed"], "progress_interval_s": 1}
    task_id = api.submit_ok(
        {"type": "detect", "input": {"image_urls": urls * 2}, "webhook": webhook}
    )
    assert api.wait(task_id)["state"] == "SUCCEEDED"
    wait_for(
        lambda: any(b"task.completed" in body for _, _, body in receiver.got(hook)),
        what="the completed event",
    )
    time.sleep(1)
    got = [(at, verified(secret, headers, body)) for at, headers, body in receiver.got(hook)]
    progress = [(at, p) for at, p in got if p["type"] == "task.progress"]
    completed = [p for _, p in got if p["type"] == "task.completed"]
    assert len(completed) == 1 and completed[0]["data"]["progress"]["done"] == len(urls) * 2
    assert progress, got
    assert all(p["data"]["state"] == "RUNNING" for _, p in progress)
    assert all(p["data"]["progress"]["done"] >= 1 for _, p in progress)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(progress)]
    assert all(gap > 0.8 for gap in gaps), gaps  # at most one a second (the delivery jitters)
    logged = {a["event"] for a in deliveries(api, task_id)}
    assert logged == {"progress", "completed"}


def test_rotated_secret_signs_with_both_for_the_grace_period(
    stack: Stack, receiver: Receiver
) -> None:
    key = stack.create_key("carol")
    old = stack.cli("keys", "webhook-secret", "carol").stdout.strip()
    rotated = stack.cli("keys", "webhook-secret", "carol", "--rotate")
    new = rotated.stdout.strip()
    assert rotated.returncode == 0 and new.startswith("whsec_") and new != old
    assert "old one too" in rotated.stderr
    assert stack.cli("keys", "webhook-secret", "carol").stdout.strip() == new  # shown again
    assert "webhook-secret" in stack.cli("keys", "list").stdout
    hook = receiver.hook()
    carol = stack.client(key)
    task_id = noop_with(carol, {"url": hook})
    wait_for(lambda: receiver.got(hook), what="the delivery")
    [(_, headers, body)] = receiver.got(hook)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verified(old, headers, body)["data"]["task_id"] == task_id
    assert verified(new, headers, body)["data"]["task_id"] == task_id


def test_the_command_line_client_asks_for_a_webhook(
    stack: Stack, api: Api, secret: str, receiver: Receiver, image_server: ImageServer, pages
) -> None:
    url = image_server.add("wh-client.jpg", jpeg_bytes(pages[1]))
    hook = receiver.hook()
    env = {**os.environ, "SCRIPTORIUM_URL": stack.base_url, "SCRIPTORIUM_KEY": stack.keys["alice"]}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model",
            "client",
            "submit",
            "--url",
            url,
            "--webhook",
            hook,
            "--wait",
            "--json",
            "-q",
        ],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result
    task_id = json.loads(result.stdout)["task_id"]
    wait_for(lambda: receiver.got(hook), what="the delivery")
    [(_, headers, body)] = receiver.got(hook)
    assert verified(secret, headers, body)["data"]["task_id"] == task_id


# --- the outbox alone, on a bare Redis: at-least-once, one attempt at a time ------------------


class _Sent:
    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        self.calls.append(args)


def test_outbox_claims_each_attempt_once_and_requeues_what_was_lost(
    store: TaskStore, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    port = clean_redis.connection_pool.connection_kwargs["port"]
    settings = Settings(data_dir=tmp_path, redis={"port": port})
    sent = _Sent()
    events.use_celery(sent)  # type: ignore[arg-type]
    try:
        record = store.create("o", "noop", {}, 0, 60, webhook={"url": "https://example.org/h"})
        store.finish(record.id, State.SUCCEEDED, only_from=[State.QUEUED])
        record = store.get(record.id)
        assert record is not None and events.task_ended(store, record)
        assert not events.task_ended(store, record)  # an event is enqueued once
        msg_id = f"msg_{record.id}_completed"
        assert sent.calls == [[msg_id, 1]]
        outbox = Outbox(clean_redis, settings)
        now = time.time()
        assert outbox.due(now) == []  # queued: leased, not due
        message = outbox.claim(msg_id, 1, now)
        assert message is not None and json.loads(message.body)["data"]["state"] == "SUCCEEDED"
        assert outbox.claim(msg_id, 1, now) is None  # the same attempt twice: once
        assert outbox.claim(msg_id, 2, now) is None  # not before the first ends
        # The attempt's process dies: once its lease runs out the scheduler queues attempt 2.
        later = now + events.lease_s(settings) + 1
        assert outbox.due(later) == [(msg_id, 1)]
        assert outbox.due(later) == []  # leased to that scheduler
        assert outbox.claim(msg_id, 2, later) is not None
        outbox.settle(message, "pending", later + 5)
        assert outbox.due(later + 4) == [] and outbox.due(later + 6) == [(msg_id, 2)]
        assert outbox.claim(msg_id, 3, later + 6) is not None
        outbox.settle(message, "delivered", None)
        assert outbox.due(later + 10_000) == []
        assert outbox.claim(msg_id, 4, later + 10_000) is None
    finally:
        events._celery = None


def test_outbox_keeps_a_key_to_its_cap_and_a_failing_host_behind_its_breaker(
    store: TaskStore, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    port = clean_redis.connection_pool.connection_kwargs["port"]
    hooks = {"concurrency": 4, "key_in_flight": 2, "breaker_failures": 3, "breaker_open_s": 60}
    settings = Settings(data_dir=tmp_path, redis={"port": port}, webhooks=hooks)
    events.use_celery(_Sent())  # type: ignore[arg-type]

    def event(owner: str, url: str) -> str:
        record = store.create(owner, "noop", {}, 0, 60, webhook={"url": url})
        store.finish(record.id, State.SUCCEEDED, only_from=[State.QUEUED])
        ended = store.get(record.id)
        assert ended is not None and events.task_ended(store, ended)
        return f"msg_{record.id}_completed"

    try:
        outbox = Outbox(clean_redis, settings)
        now = time.time()
        a = [event("a", "https://a.example/h") for _ in range(3)]
        b = event("b", "https://b.example/h")
        first = outbox.claim(a[0], 1, now)
        assert first is not None and outbox.claim(a[1], 1, now) is not None
        assert outbox.claim(a[2], 1, now) is None  # key a has 2 attempts in flight
        assert outbox.claim(b, 1, now) is not None  # another key's event goes by
        soon = now + events.defer_s(settings) + 0.01
        assert (a[2], 0) in outbox.due(soon)  # due again shortly, its attempt unused
        outbox.settle(first, "pending", now + 600)  # one of key a's attempts is over
        assert outbox.claim(a[2], 1, soon) is not None

        # a.example stops answering: 3 failures in a row open its breaker, for every key.
        for _ in range(3):
            outbox.host_answered("a.example:", "failed", now)
        c = [event("c", "https://a.example/h") for _ in range(2)]
        assert outbox.claim(c[0], 1, now + 1) is None
        assert (c[0], 0) not in outbox.due(now + 59)  # not due before the breaker half-opens
        # 60 s on, one attempt probes the host; the next waits for its answer.
        assert outbox.claim(c[0], 1, now + 61) is not None
        assert outbox.claim(c[1], 1, now + 61) is None
        outbox.host_answered("a.example:", "ok", now + 62)  # it answers: closed again
        assert outbox.claim(c[1], 1, now + 62) is not None
    finally:
        events._celery = None

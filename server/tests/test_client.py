"""The command-line client (`python -m model client`) against the live stack: submit, wait,
result, cancel, list; its exit codes and --json; retries that never duplicate a task; the
progress bar and Ctrl-C in a real pseudo-terminal; and that it imports nothing heavy."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.stack import PROJECT_ROOT, Api, Stack, free_port

LONG_TASK_IMAGES = 500  # the most a detect task may have
SLOW_PAGE_S = 0.25  # each served this late: at most 4 at once per host, so 500 take 30 s or more
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"

# Exit codes (client/errors.py), spelled out: scripts rely on the numbers.
OK, FAILED, USAGE, TIMED_OUT, CANCELLED, AUTH, NOT_FOUND, UNAVAILABLE, ACTIVE = range(9)


def client_env(stack: Stack, key: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIPTORIUM_")}
    env["SCRIPTORIUM_URL"] = stack.base_url
    if key is not None:
        env["SCRIPTORIUM_KEY"] = key
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    """A key of this module's own, so that `list` and task counts see only its tasks."""
    return stack.create_key(f"client-{uuid.uuid4().hex[:8]}", "--rate", "100000/second")


@pytest.fixture(scope="module")
def mine(stack: Stack, key: str) -> Api:
    return stack.client(key)


Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def client(stack: Stack, key: str) -> Run:
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run(
            [sys.executable, "-m", "model", "client", *args],
            env=env or client_env(stack, key),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def as_json(result: subprocess.CompletedProcess) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"stdout is not one JSON document: {result!r}") from exc


def task_count(api: Api) -> int:
    return api.request("GET", "/tasks").json()["total"]


@pytest.fixture(scope="module")
def long_urls(pages) -> Iterator[list[str]]:
    """A task that runs for half a minute whatever the machine: its pages come slowly."""
    data = jpeg_bytes(pages[0])

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(SLOW_PAGE_S)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{server.server_address[1]}/p{i}.jpg" for i in range(LONG_TASK_IMAGES)]
    server.shutdown()
    server.server_close()


@pytest.fixture
def images(tmp_path: Path, pages) -> list[str]:
    paths = []
    for i in (0, 1):
        path = tmp_path / f"page{i}.jpg"
        path.write_bytes(jpeg_bytes(pages[i]))
        paths.append(str(path))
    return paths


# --- submit, wait, result -------------------------------------------------------------------


def test_submit_wait_and_results_of_uploads(client: Run, images, tmp_path: Path) -> None:
    done = client("submit", *images, "--wait", "--json")
    assert done.returncode == OK, done
    status = as_json(done)
    assert status["state"] == "SUCCEEDED"
    assert status["progress"] == {"done": 2, "total": 2, "failed": 0}
    task_id = status["task_id"]
    assert f"task {task_id}" in done.stderr  # messages on stderr, the document alone on stdout

    out = tmp_path / "result.json"
    saved = client("result", task_id, "--format", "json", "-o", str(out))
    assert saved.returncode == OK, saved
    result = json.loads(out.read_text())
    assert len(result["items"]) == 2
    assert any(item["detections"] for item in result["items"])

    archive = tmp_path / "labels.zip"
    assert client("result", task_id, "--format", "yolo", "-o", str(archive)).returncode == OK
    with zipfile.ZipFile(archive) as zipped:
        assert "classes.txt" in zipped.namelist()

    piped = client("result", task_id)  # JSON to stdout
    assert piped.returncode == OK and json.loads(piped.stdout)["task_id"] == task_id

    shown = client("status", task_id)
    assert shown.returncode == OK, shown
    assert "SUCCEEDED" in shown.stdout and "2/2 pages done" in shown.stdout
    assert as_json(client("status", task_id, "--json"))["state"] == "SUCCEEDED"


def test_submit_prints_the_id_and_wait_logs_progress(client: Run, images) -> None:
    submitted = client("submit", images[0])
    assert submitted.returncode == OK, submitted
    task_id = submitted.stdout.strip()  # the id alone, for $(...)
    assert re.fullmatch(r"[0-9a-f]{32}", task_id), submitted.stdout

    waited = client("wait", task_id)
    assert waited.returncode == OK, waited
    assert waited.stdout.startswith("SUCCEEDED: 1/1 pages done, 0 failed")
    assert f"task {task_id}:" in waited.stderr  # stderr is no terminal: progress as lines


def test_image_urls_params_and_list(client: Run, image_server: ImageServer, pages) -> None:
    urls = [image_server.add(f"client-url{i}.jpg", jpeg_bytes(pages[i])) for i in (2, 3)]
    submitted = client("submit", "--url", *urls, "--params", '{"confidence": 0.3}', "--json")
    assert submitted.returncode == OK, submitted
    task_id = as_json(submitted)["task_id"]
    status = as_json(client("wait", task_id, "--json", "-q"))
    assert status["state"] == "SUCCEEDED" and status["progress"]["done"] == 2
    assert status["result"]["provenance"]["params"]["confidence"] == 0.3

    listed = as_json(client("list", "--json"))
    assert task_id in [task["task_id"] for task in listed["tasks"]]
    table = client("list", "--state", "succeeded")
    assert table.returncode == OK and task_id in table.stdout
    assert task_id not in client("list", "--state", "FAILED").stdout


# --- exit codes -------------------------------------------------------------------------------


def test_failed_task_exits_1(client: Run, image_server: ImageServer) -> None:
    missing = f"{image_server.url}/no-such-manifest.json"
    failed = client("submit", "--manifest", missing, "--wait", "--json")
    assert failed.returncode == FAILED, failed
    status = as_json(failed)
    assert status["state"] == "FAILED" and status["error"]["code"] == "manifest_unavailable"
    no_result = client("result", status["task_id"])
    assert no_result.returncode == FAILED and "manifest_unavailable" in no_result.stderr


def test_timed_out_task_exits_3(client: Run, long_urls) -> None:
    timed_out = client("submit", "--url", *long_urls, "--timeout", "1", "--wait", "-q")
    assert timed_out.returncode == TIMED_OUT, timed_out
    assert timed_out.stdout.startswith("TIMED_OUT")


def test_cancelled_task_exits_4(client: Run, mine: Api, long_urls) -> None:
    task_id = as_json(client("submit", "--url", *long_urls, "--json"))["task_id"]
    running = client("status", task_id)
    assert running.returncode in (ACTIVE, OK), running  # OK only if it has already finished
    cancelled = client("cancel", task_id, "--wait", "--json")
    assert cancelled.returncode == CANCELLED, cancelled
    assert as_json(cancelled)["state"] == "CANCELLED"
    assert client("wait", task_id).returncode == CANCELLED
    assert client("status", task_id).returncode == CANCELLED
    again = client("cancel", task_id)
    assert again.returncode == OK and "already ended: CANCELLED" in again.stdout


def test_ctrl_c_without_a_terminal_leaves_the_task_running(
    stack: Stack, key: str, mine: Api, long_urls
) -> None:
    """No terminal to ask on (a script, a pipe): Ctrl-C stops waiting, and only that."""
    task_id = mine.submit_ok({"type": "detect", "input": {"image_urls": long_urls}})
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "model", "client", "wait", task_id, "--json"],
            env=client_env(stack, key),
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        mine.wait(task_id, {"RUNNING"})
        connected(waiting.pid)  # past its imports (a Ctrl-C during them is Python's own)
        time.sleep(1)
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 130, (out, err)
        assert f"task {task_id} keeps running" in err
        assert json.loads(out)["error"]["exit_code"] == 130
        assert mine.status(task_id).json()["state"] == "RUNNING"
    finally:
        mine.terminate(task_id)


def connected(pid: int, timeout_s: float = 60) -> None:
    """Wait until process `pid` holds a socket: the client is polling the server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in fds):
                return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never connected")


def test_unknown_task_exits_6(client: Run) -> None:
    for command in (["status"], ["wait"], ["cancel"], ["result"]):
        result = client(*command, UNKNOWN_ID, "--json")
        assert result.returncode == NOT_FOUND, (command, result)
        assert as_json(result)["error"]["http_status"] == 404


def test_bad_or_missing_key_exits_5(client: Run, stack: Stack) -> None:
    try:
        wrong = client("list", "--json", env=client_env(stack, "not-a-key"))
        assert wrong.returncode == AUTH, wrong
        assert as_json(wrong)["error"]["http_status"] == 401
        missing = client("list", env=client_env(stack, None))
        assert missing.returncode == AUTH and "SCRIPTORIUM_KEY" in missing.stderr
    finally:
        stack.reset_auth_failures()


def test_usage_errors_exit_2(client: Run, mine: Api, images) -> None:
    before = task_count(mine)
    cases = [
        ["submit"],  # nothing to submit
        ["submit", images[0], "--params", "{not json"],
        ["submit", "no-such-file.jpg"],
        ["submit", "--url", "ftp://example.org/a.jpg"],
        ["submit", images[0], "--type", "noop"],  # uploads are for detect
        ["submit", images[0], "--params", '{"confidence": 5}'],  # the server's 422
        ["result", UNKNOWN_ID, "--format", "tiff"],
        ["frobnicate"],
    ]
    for args in cases:
        result = client(*args, "--json")
        assert result.returncode == USAGE, (args, result)
        assert as_json(result)["error"]["exit_code"] == USAGE
        assert result.stderr.strip(), args
    assert task_count(mine) == before


def test_server_unreachable_exits_7(client: Run, stack: Stack, key: str) -> None:
    env = client_env(stack, key, SCRIPTORIUM_URL=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = client("--retries", "2", "list", "--json", env=env)
    assert result.returncode == UNAVAILABLE, result
    assert "connection refused" in result.stderr
    assert result.stderr.count("retrying in") == 2
    assert time.monotonic() - started < 30


def test_webhook_refused_when_the_server_does_not_offer_it(
    client: Run, stack: Stack, scripted, images
) -> None:
    server = scripted([CREATED], {})  # an older server: its document has no webhook
    env = client_env(stack, "k", SCRIPTORIUM_URL=server.url)
    hook = "https://example.org/hook"
    result = client("submit", images[0], "--webhook", hook, "--json", env=env)
    assert result.returncode == USAGE, result
    assert "webhook" in result.stderr and "openapi" in result.stderr
    assert server.received == []  # nothing submitted


# --- retries, with a proxy that loses answers and a scripted server -----------------------------


class LosingProxy:
    """A TCP proxy to the stack that loses the answer of its first `lose` connections: the
    request reaches the server, which answers (the task exists), then the client's connection
    is closed without a byte of that answer."""

    def __init__(self, upstream_port: int, lose: int = 1) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            handler = self._lose_answer if self.connections <= self.lose else self._pipe
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    def _upstream(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)

    def _lose_answer(self, conn: socket.socket) -> None:
        with conn, self._upstream() as upstream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            while length and len(body) < int(length.group(1)):
                body += conn.recv(65536)
            upstream.sendall(head + b"\r\n\r\n" + body)
            assert upstream.recv(65536)  # the server has answered: the task exists

    def _pipe(self, conn: socket.socket) -> None:
        upstream = self._upstream()

        def copy(source: socket.socket, target: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while chunk := source.recv(65536):
                    target.sendall(chunk)
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=copy, args=(upstream, conn), daemon=True)
        back.start()
        copy(conn, upstream)
        back.join(timeout=60)
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.server.close()


def test_submit_retried_after_a_lost_answer_creates_one_task(
    client: Run, stack: Stack, key: str, mine: Api, images
) -> None:
    proxy = LosingProxy(int(stack.base_url.rsplit(":", 1)[1]))
    try:
        before = task_count(mine)
        env = client_env(stack, key, SCRIPTORIUM_URL=f"http://127.0.0.1:{proxy.port}")
        result = client("submit", *images, "--json", env=env)
        assert result.returncode == OK, result
        assert "retrying in" in result.stderr  # the first answer was lost, and retried
        assert proxy.connections >= 2
        task_id = as_json(result)["task_id"]
        assert task_count(mine) == before + 1  # the retry found the first attempt's task
        listed = mine.request("GET", "/tasks", params={"limit": 1}).json()["tasks"]
        assert listed[0]["task_id"] == task_id
        assert mine.wait(task_id)["state"] == "SUCCEEDED"
    finally:
        proxy.close()


class Scripted:
    """A stand-in server: POST /task answers from a script of (status, headers, body), and the
    requests it got are kept; GET /openapi/openapi.json serves `openapi`."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict]], openapi: dict) -> None:
        self.script = list(script)
        self.openapi = openapi
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {}, outer.openapi)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((time.monotonic(), dict(self.headers), body))
                self._send(*outer.script.pop(0))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


CREATED = (202, {}, {"task_id": "f" * 32, "state": "QUEUED", "status_url": "/status/" + "f" * 32})


def webhook_openapi(multipart_too: bool) -> dict:
    """An OpenAPI document whose POST /task takes a webhook (a future server)."""
    webhook = {"webhook": {"$ref": "#/components/schemas/Webhook"}}
    detect = {"properties": {"type": {"const": "detect"}, "input": {}, **webhook}}
    noop = {"properties": {"type": {"const": "noop"}}}
    multipart = {"properties": {"images": {}, **(webhook if multipart_too else {})}}
    return {
        "paths": {
            "/task": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"oneOf": [detect, noop]}},
                            "multipart/form-data": {"schema": multipart},
                        }
                    }
                }
            }
        },
        "components": {"schemas": {"Webhook": {"properties": {"url": {}}}}},
    }


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(script: list, openapi: dict | None = None) -> Scripted:
        made.append(Scripted(script, openapi or {}))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_submit_retries_503_and_429_with_one_idempotency_key(
    client: Run, stack: Stack, scripted, images
) -> None:
    server = scripted(
        [
            (503, {"Retry-After": "1"}, {"error": {"code": "queue_full", "message": "busy"}}),
            (429, {"Retry-After": "2"}, {"error": {"code": "rate_limited", "message": "slow"}}),
            (502, {}, {"error": {"code": "upstream_unavailable", "message": "gone"}}),
            CREATED,
        ]
    )
    env = client_env(stack, "k", SCRIPTORIUM_URL=server.url)
    result = client("submit", *images, "--json", env=env)
    assert result.returncode == OK, result
    assert as_json(result)["task_id"] == "f" * 32
    times = [at for at, _, _ in server.received]
    keys = {headers["Idempotency-Key"] for _, headers, _ in server.received}
    assert len(times) == 4 and len(keys) == 1  # one key for every attempt
    assert times[1] - times[0] >= 0.95  # the 503's Retry-After
    assert times[2] - times[1] >= 1.95  # the 429's Retry-After
    assert all(b"page0.jpg" in body for _, _, body in server.received)  # files re-sent whole
    assert len({len(body) for _, _, body in server.received}) == 1


def test_submit_gives_up_after_the_retries(client: Run, stack: Stack, scripted) -> None:
    busy = (503, {}, {"error": {"code": "queue_unavailable", "message": "down"}})
    server = scripted([busy, busy])
    env = client_env(stack, "k", SCRIPTORIUM_URL=server.url)
    result = client("--retries", "1", "submit", "--url", "http://example.org/a.jpg", env=env)
    assert result.returncode == UNAVAILABLE, result
    assert "queue_unavailable" in result.stderr


def test_webhook_sent_when_the_server_offers_it(client: Run, stack: Stack, scripted, images):
    server = scripted([CREATED, CREATED], webhook_openapi(multipart_too=False))
    env = client_env(stack, "k", SCRIPTORIUM_URL=server.url)
    hook = "https://example.org/hook"
    sent = client("submit", "--url", "http://example.org/a.jpg", "--webhook", hook, env=env)
    assert sent.returncode == OK, sent
    body = json.loads(server.received[0][2])
    assert body["webhook"] == {"url": hook} and body["type"] == "detect"
    # This document has no webhook for uploads: a clear refusal, nothing sent.
    refused = client("submit", images[0], "--webhook", hook, env=env)
    assert refused.returncode == USAGE and "with uploads" in refused.stderr
    assert len(server.received) == 1


# --- a real terminal: the progress bar, Ctrl-C and the question ---------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]")


class Terminal:
    """A command in a pseudo-terminal of its own (controlling terminal, 120x30), read and typed
    into as a person would: Ctrl-C is the byte 0x03, which the terminal turns into SIGINT."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal, then become the command (nothing else:
            try:  # other threads of this process may hold locks the child cannot take)
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
                os.chdir(PROJECT_ROOT)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = ""
        self.status: int | None = None

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw).replace("\r", "\n")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.raw += os.read(self.fd, 65536).decode(errors="replace")
            except OSError as exc:  # EIO: the command has exited and closed the terminal
                if exc.errno != errno.EIO:
                    raise
                time.sleep(0.05)

    def pump(self, seconds: float) -> None:
        """Keep reading for a while, as a terminal does (a full buffer would block the command)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.alive():
            self._read(0.1)

    def expect(self, pattern: str, timeout: float = 60, start: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text[start:])
            if found:
                return found
            if not self.alive():
                break
            self._read(0.2)
        found = re.search(pattern, self.text[start:])
        if found:
            return found
        raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.text[-3000:]}")

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is None

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            self._read(0.2)
        self._read(0.1)
        if self.status is None:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.text[-3000:]}")
        return self.status

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_progress_bar_and_ctrl_c_in_a_terminal(
    stack: Stack, key: str, mine: Api, long_urls
) -> None:
    task_id = mine.submit_ok({"type": "detect", "input": {"image_urls": long_urls}})
    env = client_env(stack, key, TERM="xterm-256color")
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    term = Terminal([sys.executable, "-m", "model", "client", "wait", task_id], env)
    try:
        # The bar: state, pages done of the total, failed, rate and ETA, all on the terminal.
        term.expect(rf"{task_id[:8]} RUNNING.*\b[1-9]\d*/{LONG_TASK_IMAGES} pages.*pages/s")
        term.expect(r"ETA \d+:\d\d")

        term.type(b"\x03")  # Ctrl-C: a question, not an exit
        prompt = re.escape(f"cancel task {task_id}? [y/N]")
        term.expect(prompt)
        term.type(b"n\r")
        term.expect("still waiting")
        after_no = len(term.text)
        term.pump(2)
        assert term.alive(), term.text[-2000:]
        term.expect(rf"\d+/{LONG_TASK_IMAGES} pages", timeout=10, start=after_no)  # bar is back
        assert mine.status(task_id).json()["state"] == "RUNNING"

        term.type(b"\x03")
        term.expect(f"{prompt}(.|\n)*{prompt}")  # asked a second time
        term.type(b"y\r")
        term.expect(f"cancelling task {task_id}")
        assert term.wait(60) == CANCELLED, term.text[-2000:]
        term.expect(r"CANCELLED: \d+/500 pages done")
    finally:
        term.kill()
        if mine.status(task_id).json()["state"] in ("QUEUED", "RUNNING"):
            mine.terminate(task_id)  # a failed test leaves no task hogging the worker
    body = mine.status(task_id).json()
    assert body["state"] == "CANCELLED", body["state"]
    assert 1 <= body["progress"]["done"] < LONG_TASK_IMAGES


# --- light enough for a front-end host ----------------------------------------------------------

ISOLATED = r"""
import importlib.abc, json, sys

HEAVY = {"torch", "torchvision", "PIL", "ultralytics", "numpy", "cv2", "onnxruntime", "flask",
         "flask_openapi3", "werkzeug", "pydantic", "pydantic_settings", "yaml", "redis", "celery"}
SERVICE = ("model.inference", "model.settings", "model.api", "model.worker", "model.tasks")

def heavy(name):
    return name.split(".")[0] in HEAVY or name.startswith(SERVICE)

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if heavy(name):
            raise ImportError("the client imported " + name)

sys.meta_path.insert(0, Refuse())
import runpy
sys.argv = ["model", *sys.argv[1:]]
try:
    runpy.run_module("model", run_name="__main__", alter_sys=True)  # `python -m model ...`
except SystemExit as exit:
    code = exit.code
import client.commands, client.http, client.progress
client.progress.RichView("0" * 32)
loaded = sorted(name for name in sys.modules if heavy(name))
with open(REPORT, "w") as fh:
    json.dump({"code": code, "loaded": loaded}, fh)
"""


def test_client_imports_nothing_heavy(stack: Stack, key: str, images, tmp_path: Path) -> None:
    """The client runs with only requests and rich: no torch, PIL, ultralytics, nor the service's
    own Flask/pydantic code, even though this venv has all of them (imports of them fail)."""
    report = tmp_path / "report.json"
    script = f"REPORT = {str(report)!r}\n" + ISOLATED
    result = subprocess.run(
        [sys.executable, "-c", script, "client", "submit", *images, "--wait", "--json"],
        env=client_env(stack, key),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result
    assert json.loads(report.read_text()) == {"code": OK, "loaded": []}, result.stderr
    assert as_json(result)["state"] == "SUCCEEDED"


def test_client_requirements_pin_what_the_service_pins() -> None:
    """requirements-client.txt (front-end hosts) and requirements.txt agree on every pin."""

    def pins(name: str) -> dict[str, str]:
        lines = (PROJECT_ROOT / name).read_text().splitlines()
        pairs = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
        return {package.strip().lower(): version.strip() for package, version in pairs}

    client, service = pins("requirements-client.txt"), pins("requirements.txt")
    assert set(client) == {"requests", "rich"}
    assert {name: service.get(name) for name in client} == client

"""nginx in front of gunicorn: unix socket upstream, privacy of its access log, its own errors in
JSON, gzip, and the internal location large result files are sent from (X-Accel-Redirect)."""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests

from testkit.stack import Api, Stack

pytestmark = pytest.mark.live


def _unix_get(path: Path, url: str) -> tuple[int, bytes]:
    """A plain HTTP/1.0 GET over a unix socket (requests cannot)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(f"GET {url} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_requests_reach_gunicorn_over_its_unix_socket(stack: Stack, api: Api) -> None:
    run = stack.data_dir / "run"
    assert (run / "upstream.sock").readlink() == Path("gunicorn.sock")
    assert f"Listening at: unix:{run}/gunicorn.sock" in stack.log("gunicorn")
    assert _unix_get(run / "gunicorn.sock", "/healthz") == (200, b'{"status":"ok"}\n')

    rid = uuid.uuid4().hex
    resp = api.request("GET", "/models", headers={"X-Request-Id": rid})
    assert resp.status_code == 200 and resp.headers["Server"] == "nginx"
    # The same request id in nginx's log and gunicorn's: nginx passed the request on.
    assert stack.log_lines("nginx-access", rid)
    assert stack.log_lines("gunicorn", rid)


def test_nginx_access_log_has_no_client_address_or_user_agent(stack: Stack, api: Api) -> None:
    rid = uuid.uuid4().hex
    agent = "PrivateAgent/2.0 (tester@example.org)"
    for path in ("/models", "/healthz", "/status/" + "0" * 32, "/nope"):
        api.request("GET", path, headers={"X-Request-Id": rid, "User-Agent": agent})
    lines = stack.log_lines("nginx-access", rid, count=4)
    log = stack.log("nginx-access")
    assert len(lines) == 4, log[-2000:]
    # The whole file, not only these lines: every request so far came from 127.0.0.1.
    assert "127.0.0.1" not in log
    assert "PrivateAgent" not in log and "tester@example.org" not in log


def test_body_over_the_limit_is_a_json_413_from_nginx(stack: Stack) -> None:
    rid = uuid.uuid4().hex
    limit = 50 * 1024 * 1024
    conn = http.client.HTTPConnection(
        "127.0.0.1", int(stack.base_url.rsplit(":", 1)[1]), timeout=10
    )
    # nginx refuses on the Content-Length header alone: no need to send the body.
    conn.putrequest("POST", "/task")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(limit + 1))
    conn.putheader("X-Request-Id", rid)
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("X-Request-Id") == rid
    assert body["error"]["code"] == "payload_too_large"
    assert str(limit) in body["error"]["message"]
    # Answered by nginx: gunicorn never saw it.
    assert stack.log_lines("nginx-access", rid)
    assert not stack.log_lines("gunicorn", rid, timeout_s=1.5)


def test_internal_location_is_not_reachable_and_errors_are_json(stack: Stack) -> None:
    resp = requests.get(stack.base_url + "/internal/results/anything.json", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_json_is_gzipped(stack: Stack) -> None:
    resp = requests.get(
        stack.base_url + "/openapi/openapi.json", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.json()["openapi"].startswith("3.1")


class _AccelServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _AccelHandler(BaseHTTPRequestHandler):
    """Stands in for the app: answers every request with an X-Accel-Redirect to a result file."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("X-Accel-Redirect", "/internal/results/big-result.json")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def accel_upstream(stack: Stack) -> Iterator[None]:
    """Points nginx at a fake app on gunicorn-next.sock (as a release would), then back."""
    sock = stack.data_dir / "run" / "gunicorn-next.sock"
    sock.unlink(missing_ok=True)
    server = _AccelServer(str(sock), _AccelHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert stack.cli("upstream", "gunicorn-next").returncode == 0
    try:
        yield
    finally:
        assert stack.cli("upstream", "gunicorn").returncode == 0
        server.shutdown()
        server.server_close()
        sock.unlink(missing_ok=True)


def test_x_accel_redirect_sends_result_files_from_nginx(stack: Stack, accel_upstream) -> None:
    payload = json.dumps({"items": ["x" * 100] * 2000})
    (stack.data_dir / "results" / "big-result.json").write_text(payload)
    resp = requests.get(stack.base_url + "/status/whatever", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.text == payload

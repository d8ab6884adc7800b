"""The edge (nginx, then gunicorn) on the live stack: every error it answers itself is our JSON,
methods outside the API are refused there, anonymous floods are shed there before they reach
gunicorn, and secrets sent in a query string never reach its or gunicorn's access log."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from model.frontdoor import NGINX_TEMPLATE, nginx_values, render
from model.settings import PROJECT_ROOT, get_settings
from testkit.stack import Api, Stack

ALLOW = "GET, POST, DELETE, OPTIONS, HEAD"


def _port(stack: Stack) -> int:
    return int(stack.base_url.rsplit(":", 1)[1])


def _raw(stack: Stack, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library tidying them) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", _port(stack)), timeout=15) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def _get(path: str, headers: list[tuple[str, str]] = (), method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}:{value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers.get("content-type") == "application/json", (status, headers, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] and error["message"], body
    return error


# --- (11) errors nginx or gunicorn answer themselves are JSON --------------------------------


def test_header_line_over_nginx_buffer_is_json_431(stack: Stack) -> None:
    rid = uuid.uuid4().hex
    status, headers, body = _raw(
        stack, _get("/models", [("X-Request-Id", rid), ("X-Big", "a" * 9000)])
    )
    assert status == 431, (status, body[:300])
    assert _json_error(status, headers, body)["code"] == "request_header_fields_too_large"
    assert headers.get("x-request-id")


def test_headers_over_nginx_total_are_json_431(stack: Stack) -> None:
    filler = [(f"X-Filler-{i}", "b" * 1000) for i in range(40)]  # 40 KB in all, each line fits
    status, headers, body = _raw(stack, _get("/healthz", filler))
    assert status == 431, (status, body[:300])
    _json_error(status, headers, body)


def test_many_headers_reach_the_app_instead_of_a_gunicorn_431(stack: Stack) -> None:
    # 200 fields is well within nginx's buffers: gunicorn must not refuse them (in HTML).
    filler = [(f"X-Filler-{i}", "c") for i in range(200)]
    status, _, body = _raw(stack, _get("/healthz", filler))
    assert status == 200, body[:300]


@pytest.mark.parametrize("size", [8170, 8180, 8185, 8188, 8189, 8190, 8191, 8192])
def test_header_lines_at_nginx_limit_are_json_or_served(stack: Stack, size: int) -> None:
    # "Name:value" without a space: nginx forwards "Name: value", one byte longer.
    name = "X-Edge"
    status, headers, body = _raw(stack, _get("/healthz", [(name, "d" * (size - len(name) - 1))]))
    if status != 200:
        _json_error(status, headers, body)


def test_long_url_is_json_414_from_nginx(stack: Stack) -> None:
    status, headers, body = _raw(stack, _get("/status/" + "e" * 10_000))
    assert status == 414, body[:300]
    assert _json_error(status, headers, body)["code"] == "request_uri_too_large"


@pytest.mark.parametrize("length", [4100, 6000, 8160, 8170, 8175, 8176, 8177, 8178, 8179, 8185])
def test_urls_nginx_accepts_reach_the_app(stack: Stack, length: int) -> None:
    # Anything nginx passes on must not meet a smaller limit in gunicorn (an HTML 414 there).
    path = "/nope/" + "f" * (length - len("/nope/"))
    status, headers, body = _raw(stack, _get(path))
    error = _json_error(status, headers, body)
    assert (status, error["code"]) in ((404, "not_found"), (414, "request_uri_too_large"))


@pytest.mark.parametrize("method", ["TRACE", "PUT", "PATCH", "PROPFIND", "FOO"])
def test_other_methods_are_json_405_with_allow(stack: Stack, method: str) -> None:
    status, headers, body = _raw(stack, _get("/task", method=method))
    assert status == 405, (status, body[:300])
    assert _json_error(status, headers, body)["code"] == "method_not_allowed"
    assert headers.get("allow") == ALLOW


def test_connect_is_json(stack: Stack) -> None:
    status, headers, body = _raw(stack, _get("localhost:80", method="CONNECT"))
    assert status in (400, 405)
    _json_error(status, headers, body)


def test_allowed_methods_still_reach_the_app(stack: Stack) -> None:
    # The app's own 405 (a known method on the wrong route) and its OPTIONS pass through.
    resp = requests.get(stack.base_url + "/task", timeout=10)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert resp.headers.get("Allow") != ALLOW  # the app's answer (its route's methods)
    assert requests.options(stack.base_url + "/models", timeout=10).status_code != 405
    assert requests.head(stack.base_url + "/healthz", timeout=10).status_code == 200


def test_header_values_gunicorn_refuses_are_json(stack: Stack) -> None:
    # nginx passes control characters in a value on; gunicorn refuses them itself.
    for value in ("a\x01b", "a\x7fb", "a\tb"):
        status, headers, body = _raw(stack, _get("/healthz", [("X-Odd", value)]))
        if status != 200:
            _json_error(status, headers, body)


def test_nul_byte_request_line_is_json_400(stack: Stack) -> None:
    status, headers, body = _raw(stack, b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert _json_error(status, headers, body)["code"] == "bad_request"


@pytest.fixture
def dead_upstream(stack: Stack) -> Iterator[None]:
    """nginx pointed at gunicorn-next.sock with nothing listening there, then back."""
    (stack.data_dir / "run" / "gunicorn-next.sock").unlink(missing_ok=True)
    assert stack.cli("upstream", "gunicorn-next").returncode == 0
    try:
        yield
    finally:
        assert stack.cli("upstream", "gunicorn").returncode == 0


def test_unreachable_app_is_json_502(stack: Stack, dead_upstream: None) -> None:
    resp = requests.get(stack.base_url + "/models", timeout=10)
    assert resp.status_code == 502 and resp.headers["Retry-After"] == "5"
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["error"]["code"] == "upstream_unavailable"


def test_every_edge_error_status_has_a_json_page() -> None:
    conf = render((PROJECT_ROOT / NGINX_TEMPLATE).read_text(), nginx_values(get_settings()))
    pages = {
        int(code)
        for line in re.findall(r"^\s*error_page ([\d ]+) ", conf, re.M)
        for code in line.split()
    }
    assert pages >= {400, 405, 413, 414, 429, 431, 494, 500, 502, 503, 504}


# --- (8) nginx sheds anonymous floods before they reach gunicorn -------------------------------


def _flood(stack: Stack, path: str, rid: str, n: int = 200, key: str | None = None) -> list:
    headers = {"X-Request-Id": rid}
    if key:
        headers["X-API-Key"] = key

    def one(_: int) -> requests.Response:
        return requests.get(stack.base_url + path, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def _refilled(stack: Stack, path: str) -> None:
    """Wait for the limit's bucket to refill, so that later tests are not limited."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(1)
        if requests.get(stack.base_url + path, timeout=10).status_code != 429:
            time.sleep(2)  # the whole burst back, not only one request
            return
    raise AssertionError(f"{path} still limited")


_ACCESS = re.compile(r'" (\d{3}) \S+ \S+ (\S+) rid=(\w+)$')


def _assert_shed_by_nginx(stack: Stack, responses: list, rid: str) -> None:
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    for resp in limited:
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json()["error"]["code"].startswith("too_many_")
        assert int(resp.headers["Retry-After"]) >= 1
    # nginx logged every request; those it answered itself have no upstream time. gunicorn saw
    # only the others.
    assert len(stack.log_lines("nginx-access", rid, len(responses))) == len(responses)
    entries = [_ACCESS.search(line) for line in stack.log_lines("nginx-access", rid)]
    shed = sum(e is not None and e[1] == "429" and e[2] == "-" for e in entries)
    assert shed, entries[:5]
    served = len(responses) - shed
    assert len(stack.log_lines("gunicorn", rid, served)) == served
    time.sleep(1.5)
    assert len(stack.log_lines("gunicorn", rid)) == served


def test_anonymous_docs_flood_is_shed_by_nginx(stack: Stack) -> None:
    rid = uuid.uuid4().hex
    responses = _flood(stack, "/openapi/openapi.json", rid)
    try:
        _assert_shed_by_nginx(stack, responses, rid)
    finally:
        _refilled(stack, "/openapi/openapi.json")
    assert requests.get(stack.base_url + "/openapi/openapi.json", timeout=10).status_code == 200


def test_keyless_flood_is_shed_by_nginx(stack: Stack) -> None:
    # An unknown path: the app's own budget for failed authentications stays out of it.
    rid = uuid.uuid4().hex
    responses = _flood(stack, "/nope", rid)
    try:
        assert {r.status_code for r in responses} == {404, 429}
        _assert_shed_by_nginx(stack, responses, rid)
    finally:
        _refilled(stack, "/nope")


def test_share_link_flood_is_shed_by_nginx_whatever_headers_it_carries(
    stack: Stack, api: Api
) -> None:
    # A non-Bearer Authorization header once took token reads out of every limit: nginx's
    # keyless zone skipped them and the app had no key to count them by.
    task_id = api.submit_ok({"type": "noop"})
    api.wait(task_id)
    token = api.request("POST", f"/result/{task_id}/shares").json()["token"]
    path = f"/result/{task_id}?token={token}"
    rid = uuid.uuid4().hex
    headers = {"X-Request-Id": rid, "Authorization": "Basic x"}

    def one(_: int) -> requests.Response:
        return requests.get(stack.base_url + path, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(150)))
    try:
        assert {r.status_code for r in responses} == {200, 429}
        _assert_shed_by_nginx(stack, responses, rid)
    finally:
        _refilled(stack, path)


def test_probes_and_keyed_calls_are_not_limited_by_nginx(stack: Stack) -> None:
    for path in ("/healthz", "/readyz"):
        codes = {r.status_code for r in _flood(stack, path, uuid.uuid4().hex, n=150)}
        assert codes == {200}, (path, codes)
    # Keyed calls are the app's to count, per key (this key's own rate is high).
    key = stack.create_key("edge-flood", "--rate", "100000/second")
    codes = {r.status_code for r in _flood(stack, "/models", uuid.uuid4().hex, 150, key)}
    assert codes == {200}, codes


# --- (12) secrets in a query string never reach an access log ----------------------------------


def test_query_string_secrets_are_not_logged(stack: Stack) -> None:
    secret = "SECRETVALUE" + uuid.uuid4().hex
    paths = [
        f"/status/x?api_key={secret}",
        f"/tasks?token={secret}",
        f"/tasks?state=QUEUED&key={secret}",
        f"/tasks?X-API-Key={secret}&limit=5",
        f"/models?access_token={secret}&api_key={secret}2",
        f"/tasks?api%5Fkey={secret}",
        f"/openapi/openapi.json?apikey={secret}",
    ]
    # A valid key in the header too: this test is not about failed authentications.
    headers = {"X-API-Key": stack.keys["alice"]}
    rids = []
    for path in paths:
        rids.append(uuid.uuid4().hex)
        headers["X-Request-Id"] = rids[-1]
        requests.get(stack.base_url + path, headers=headers, timeout=10)
    # A harmless query is still logged as it came.
    headers["X-Request-Id"] = rid = uuid.uuid4().hex
    requests.get(stack.base_url + "/tasks?state=QUEUED&limit=5", headers=headers, timeout=10)
    # Request lines nginx refuses: one it cannot parse, one too long.
    assert _raw(stack, _get(f"/tasks?api_key={secret}\x00x"))[0] == 400
    assert _raw(stack, _get(f"/tasks?api_key={secret}&pad={'p' * 9000}"))[0] == 414
    for name in ("nginx-access", "gunicorn"):
        for rid_, path in zip(rids, paths, strict=True):
            assert len(stack.log_lines(name, rid_)) == 1, (name, path)
            line = stack.log_lines(name, rid_)[0]
            assert path.split("?")[0] + "?" in line, (name, line)
        assert len(stack.log_lines(name, rid)) == 1
        assert "/tasks?state=QUEUED&limit=5 " in stack.log_lines(name, rid)[0]
    time.sleep(1)
    for name in ("nginx-access", "nginx-error", "gunicorn"):
        assert secret not in stack.log(name), name


def test_redact_query() -> None:
    from model.frontdoor import redact_query, redact_text

    assert redact_query("") == ""
    assert redact_query("format=iiif&manifest=2") == "format=iiif&manifest=2"
    assert redact_query("api_key=s&x=1") == "api_key=REDACTED&x=1"
    assert redact_query("X-API-Key=s&Token=t&key=") == "X-API-Key=REDACTED&Token=REDACTED&key="
    assert redact_query("api%5Fkey=s&access_token=t") == "api%5Fkey=REDACTED&access_token=REDACTED"
    assert redact_query("q=key&keyring") == "q=key&keyring"
    assert (
        redact_text("Error handling request GET /x?a=1&token=s HTTP/1.0")
        == "Error handling request GET /x?a=1&token=REDACTED HTTP/1.0"
    )

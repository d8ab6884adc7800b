"""The per-key request budget through the app (Flask's test client, bare Redis): one budget
per key across the API, the 429 it answers, what it never counts. The same through nginx and
gunicorn: test_security.py, test_hardening_api.py."""

from __future__ import annotations

import time

TASK = "0" * 32


def test_one_budget_per_key_across_the_api_with_a_json_429(make_app) -> None:
    client = make_app()
    key = client.keys.create("bursty", rate_limit="3/minute")
    headers = {"X-API-Key": key}
    paths = ["/models", f"/status/{TASK}", "/tasks", "/models"]
    codes = [client.get(path, headers=headers).status_code for path in paths]
    assert codes == [200, 404, 200, 429]
    limited = client.get("/models", headers=headers)
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "too_many_requests"
    assert "3 per 1 minute" in limited.get_json()["error"]["message"]
    assert 0 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(limited.headers["X-RateLimit-Reset"]) - time.time() <= 61
    # Counted in Redis under the key's hash, never the key itself.
    names = list(client.redis.scan_iter("LIMITS:LIMITER/sc:limits/*"))
    assert len(names) == 1 and names[0].endswith("/global/3/1/minute"), names
    assert key not in names[0]
    # Another key has its own budget; the probes are never limited.
    other = {"X-API-Key": client.keys.create("calm", rate_limit="3/minute")}
    assert client.get("/models", headers=other).status_code == 200
    assert client.get("/healthz", headers=headers).status_code == 200


def test_the_default_rate_and_the_shortest_window_first(make_app) -> None:
    client = make_app(limits={"rate": "2/second;100/minute"})
    headers = {"X-API-Key": client.keys.create("plain")}
    codes = [client.get("/models", headers=headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert "2 per 1 second" in client.get("/models", headers=headers).get_json()["error"]["message"]


def test_requests_without_a_key_or_a_route_are_not_counted(make_app) -> None:
    client = make_app(limits={"rate": "1/minute", "auth_failures": "1000/second"})
    for _ in range(3):
        assert client.get("/models").status_code == 401
        assert client.get("/nope", headers={"X-API-Key": "sk_any"}).status_code == 404
    assert not list(client.redis.scan_iter("LIMITS:LIMITER/sc:limits/*"))
    # An unknown key is counted like any other (then refused by authentication).
    assert client.get("/models", headers={"X-API-Key": "sk_unknown"}).status_code == 401
    assert client.get("/models", headers={"X-API-Key": "sk_unknown"}).status_code == 429


def test_limits_fail_open_while_redis_is_away(make_app) -> None:
    client = make_app(limits={"rate": "1/minute"})
    headers = {"X-API-Key": client.keys.create("plain")}
    limiter = client.application.extensions["scriptorium.limiter"]
    strategy = limiter.strategy if hasattr(limiter, "strategy") else limiter.limiter

    def away(*args: object, **kwargs: object) -> bool:
        raise ConnectionError("redis away")

    strategy.hit = away
    assert [client.get("/models", headers=headers).status_code for _ in range(3)] == [200] * 3


def _counter(client) -> int:
    names = list(client.redis.scan_iter("LIMITS:LIMITER/sc:limits/*"))
    return sum(int(client.redis.get(name)) for name in names)


def test_a_status_read_is_counted_once_and_refused_over_the_limit(make_app) -> None:
    # GET /status counts the request in the round trip that reads the task: once, and a
    # key over its limit gets the 429 whatever the task.
    client = make_app()
    key = client.keys.create("poller", rate_limit="3/minute")
    headers = {"X-API-Key": key}
    task_id = client.post("/task", json={"type": "noop"}, headers=headers).get_json()["task_id"]
    assert client.get(f"/status/{task_id}", headers=headers).status_code == 202
    assert _counter(client) == 2
    assert client.get(f"/status/{TASK}", headers=headers).status_code == 404
    assert _counter(client) == 3
    for path in (f"/status/{task_id}", f"/status/{TASK}", "/status/not-an-id"):
        limited = client.get(path, headers=headers)
        assert limited.status_code == 429, path
        assert limited.get_json()["error"]["code"] == "too_many_requests"
        assert limited.headers["X-RateLimit-Limit"] == "3"
        assert int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["X-Request-Id"]
    assert _counter(client) == 6


def test_a_status_request_refused_before_its_view_is_still_counted(make_app) -> None:
    client = make_app(limits={"auth_failures": "1000/second"})
    headers = {"X-API-Key": client.keys.create("typo", rate_limit="2/minute")}
    bad = "/status/" + "z" * 32  # not a task id: refused by validation or as unknown
    codes = [client.get(bad, headers=headers).status_code for _ in range(3)]
    assert codes[2] == 429 and codes[0] in (404, 422), codes
    assert _counter(client) == 3
    # An unknown key on /status: counted, then refused by authentication.
    unknown = {"X-API-Key": "sk_unknown"}
    assert client.get(f"/status/{TASK}", headers=unknown).status_code == 401
    from model.keys import hash_key

    who = hash_key("sk_unknown")[:32]
    counted = [client.redis.get(n) for n in client.redis.scan_iter(f"LIMITS:*/key:{who}/*")]
    assert counted and set(counted) == {"1"}  # in each window of the default rate


def test_a_key_with_several_limits_polls_status_within_the_shortest(make_app) -> None:
    client = make_app()
    headers = {"X-API-Key": client.keys.create("two", rate_limit="2/second;50/minute")}
    codes = [client.get(f"/status/{TASK}", headers=headers).status_code for _ in range(3)]
    assert codes == [404, 404, 429]
    # The minute's window was not charged for the refused request (shortest first).
    minute = [n for n in client.redis.scan_iter("LIMITS:*") if n.endswith("/50/1/minute")]
    assert [client.redis.get(n) for n in minute] == ["2"]


def test_a_status_read_after_redis_lost_its_scripts(make_app) -> None:
    # The count and the read are sent by hash in one round trip; a Redis restarted (or
    # flushed) answers NOSCRIPT: nothing was counted, both go again on their own.
    client = make_app()
    headers = {"X-API-Key": client.keys.create("after-restart", rate_limit="2/minute")}
    task_id = client.post("/task", json={"type": "noop"}, headers=headers).get_json()["task_id"]
    client.redis.script_flush()
    status = client.get(f"/status/{task_id}", headers=headers)
    assert status.status_code == 202 and status.get_json()["task_id"] == task_id
    assert _counter(client) == 2
    client.redis.script_flush()
    assert client.get(f"/status/{task_id}", headers=headers).status_code == 429
    assert _counter(client) == 3

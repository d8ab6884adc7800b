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

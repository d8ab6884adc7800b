"""The browser-facing side of the HTTP app, on a bare Redis (no worker, no nginx): CORS
preflights before authentication, viewer-ready IIIF routes, share links, the operator page.
The same things in a real browser against a live stack: test_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

ORIGIN = "https://viewer.example.org"
PUBLIC = "https://scriptorium.example.org/api"


@pytest.fixture
def web(clean_redis: redis.Redis, tmp_path: Path):
    """The app with one allowed origin and a public URL; `web.key` is an API key."""
    from model.api.app import create_app
    from model.keys import KeyStore
    from model.settings import Settings

    port = clean_redis.connection_pool.connection_kwargs["port"]
    settings = Settings(
        data_dir=tmp_path,
        redis={"port": port},
        cors={"origins": [ORIGIN + "/"]},
        http={"public_url": PUBLIC},
    )
    app = create_app(settings)
    keys = KeyStore(settings.keys_db)
    client = app.test_client()
    client.key = keys.create("web")
    client.other_key = keys.create("other")
    client.admin_key = keys.create("boss", admin=True)
    client.app_settings = settings
    return client


def _preflight(client, origin: str, path: str = "/task", method: str = "POST"):
    return client.open(
        path,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,x-api-key,idempotency-key",
        },
    )


def test_preflight_is_answered_before_authentication(web) -> None:
    resp = _preflight(web, ORIGIN)
    assert resp.status_code == 204, resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"x-api-key", "authorization", "idempotency-key", "content-type"} <= allowed
    methods = set(resp.headers["Access-Control-Allow-Methods"].split(", "))
    assert {"POST", "GET", "DELETE"} <= methods
    assert "Origin" in resp.headers["Vary"]
    # Any route, even one that needs a key and does not exist: no 401, no 404 for a preflight.
    assert _preflight(web, ORIGIN, f"/status/{'0' * 32}", "GET").status_code == 204


def test_preflight_from_another_origin_is_refused(web) -> None:
    resp = _preflight(web, "https://evil.example")
    assert resp.status_code == 403
    assert resp.get_json()["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_real_requests_expose_headers_to_the_allowed_origin_only(web) -> None:
    body = {"type": "noop"}
    resp = web.post("/task", json=body, headers={"X-API-Key": web.key, "Origin": ORIGIN})
    assert resp.status_code == 202
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = resp.headers["Access-Control-Expose-Headers"]
    assert {"Location", "Retry-After", "X-Request-Id"} <= set(exposed.split(", "))
    evil = web.get("/models", headers={"X-API-Key": web.key, "Origin": "https://evil.example"})
    assert evil.status_code == 200 and "Access-Control-Allow-Origin" not in evil.headers
    # Errors too: a browser page must be able to read why (401 without a key).
    denied = web.get("/models", headers={"Origin": ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["Access-Control-Allow-Origin"] == ORIGIN

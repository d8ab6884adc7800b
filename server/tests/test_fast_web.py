"""The browser-facing side of the HTTP app, on a bare Redis (no worker, no nginx): CORS
preflights before authentication, viewer-ready IIIF routes, share links, the operator page.
The same things in a real browser against a live stack: test_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

ORIGIN = "https://viewer.example.org"
PUBLIC = "https://scriptorium.example.org/api"


def _web_app(redis_server: redis.Redis, tmp_path: Path, **overrides):
    """The app with one allowed origin and a public URL; `.key` is an API key."""
    from model.api.app import create_app
    from model.keys import KeyStore
    from model.settings import Settings

    port = redis_server.connection_pool.connection_kwargs["port"]
    settings = Settings(
        data_dir=tmp_path,
        redis={"port": port},
        cors={"origins": [ORIGIN + "/"]},
        http={"public_url": PUBLIC},
        limits={"auth_failures": "1000/second"},  # the tests refuse many on purpose
        **overrides,
    )
    app = create_app(settings)
    keys = KeyStore(settings.keys_db)
    client = app.test_client()
    client.keys = keys
    client.key = keys.create("web")
    client.other_key = keys.create("other")
    client.admin_key = keys.create("boss", admin=True)
    client.app_settings = settings
    return client


@pytest.fixture
def web(clean_redis: redis.Redis, tmp_path: Path):
    return _web_app(clean_redis, tmp_path)


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


# --- viewer-ready IIIF results --------------------------------------------------------------------

BOOK = "https://library.example/iiif/book"


def _v3_book() -> dict:
    def canvas(n: int, painted: bool = True) -> dict:
        body = {"id": f"{BOOK}/{n}.jpg", "type": "Image", "format": "image/jpeg"}
        kind = body if painted else {"id": f"{BOOK}/{n}.mp3", "type": "Sound"}
        return {
            "id": f"{BOOK}/canvas/{n}",
            "type": "Canvas",
            "label": {"en": [f"f. {n}"]},
            "width": 1000,
            "height": 1500,
            "items": [
                {
                    "id": f"{BOOK}/canvas/{n}/page",
                    "type": "AnnotationPage",
                    "items": [
                        {
                            "id": f"{BOOK}/canvas/{n}/painting",
                            "type": "Annotation",
                            "motivation": "painting",
                            "body": kind,
                            "target": f"{BOOK}/canvas/{n}",
                        }
                    ],
                }
            ],
        }

    first = canvas(0)
    first["annotations"] = [{"id": f"{BOOK}/transcription/0", "type": "AnnotationPage"}]
    return {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": f"{BOOK}/manifest",
        "type": "Manifest",
        "label": {"en": ["Book"]},
        "items": [first, canvas(1, painted=False), canvas(2), canvas(3)],
    }


def _detection(x: int, confidence: float) -> dict:
    return {"xywh": [x, 100, 200, 300], "confidence": confidence, "label": "illustration"}


def _canvas_item(index: int, position: int, status: str, detections: list[dict]) -> dict:
    return {
        "index": index,
        "source": f"{BOOK}/{position}.jpg",
        "canvas_id": f"{BOOK}/canvas/{position}",
        "canvas_index": position,
        "label": f"f. {position}",
        "manifest": 0,
        "status": status,
        "coordinates": "canvas",
        "canvas_width": 1000,
        "canvas_height": 1500,
        "width": 500,
        "height": 750,
        "image_url": f"{BOOK}/{position}.jpg",
        "detections": detections,
    }


def _finished_task(
    web, source: dict, version: int, items: list[dict], owner: str = "web", **provenance
) -> str:
    """A finished detect task in the store, as the worker leaves it."""
    import json

    from model.tasks.states import State
    from model.tasks.store import TaskStore

    settings = web.app_settings
    store = TaskStore(web.application.extensions["scriptorium"].redis, 3600, 3600)
    record = store.create(owner, "detect", {"params": {}, "inputs": []}, len(items), 60)
    store.mark_running(record.id, 1)
    manifest = {"index": 0, "source": BOOK, "id": BOOK, "label": "Book", "version": version}
    provenance = {"manifests": [manifest], "classes": ["illustration"], **provenance}
    store.set_provenance(record.id, provenance)
    store.keep_manifest(record.id, 0, json.dumps(source), settings.hard_limit_s(60))
    for item in items:
        store.add_item(record.id, item, item["status"] != "ok")
    assert store.finish(record.id, State.SUCCEEDED)
    return record.id


V3_ITEMS = [
    _canvas_item(0, 0, "ok", [_detection(10, 0.91), _detection(400, 0.42)]),
    _canvas_item(1, 2, "failed", []),
    _canvas_item(2, 3, "ok", []),
]


def _local(url: str) -> str:
    """A public URL as the test client's path (the app is served at PUBLIC)."""
    assert url.startswith(PUBLIC + "/"), url
    return url[len(PUBLIC) :].split("#", 1)[0]


def test_viewer_manifest_points_each_analysed_canvas_at_its_page(web) -> None:
    task_id = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    key = {"X-API-Key": web.key, "Host": "evil.example"}  # ids never come from Host
    resp = web.get(f"/result/{task_id}/iiif/manifest/0", headers=key)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/ld+json"
    doc = resp.get_json()
    base = f"{PUBLIC}/result/{task_id}/iiif/manifest/0"
    assert doc["id"] == base and doc["type"] == "Manifest"
    canvases = doc["items"]
    # The publisher's own annotations stay; ours come after them.
    assert canvases[0]["annotations"] == [
        {"id": f"{BOOK}/transcription/0", "type": "AnnotationPage"},
        {"id": f"{base}/canvas/0/annotations", "type": "AnnotationPage"},
    ]
    assert "annotations" not in canvases[1]  # skipped (sound)
    assert "annotations" not in canvases[2]  # its page failed
    assert canvases[3]["annotations"] == [
        {"id": f"{base}/canvas/3/annotations", "type": "AnnotationPage"}
    ]

    page = web.get(_local(canvases[0]["annotations"][1]["id"]), headers=key).get_json()
    assert page["type"] == "AnnotationPage" and page["id"] == f"{base}/canvas/0/annotations"
    assert len(page["items"]) == 2
    for anno in page["items"]:
        assert anno["id"].startswith(page["id"] + "#")
        assert anno["motivation"] == ["commenting", "tagging"]
        tag, comment = anno["body"]
        assert (tag["purpose"], tag["value"]) == ("tagging", "illustration")
        assert comment["purpose"] == "commenting" and comment["value"].startswith("confidence 0.")
        assert anno["target"].startswith(f"{BOOK}/canvas/0#xywh=")
        # Dereferenced, an annotation id gives the page that holds it.
        held = web.get(_local(anno["id"]), headers=key).get_json()
        assert anno["id"] in [a["id"] for a in held["items"]]
    empty = web.get(_local(canvases[3]["annotations"][0]["id"]), headers=key).get_json()
    assert empty["items"] == []
    assert (
        web.get(f"/result/{task_id}/iiif/manifest/0/canvas/2/annotations", headers=key).status_code
        == 404
    )

    # The manifest's page and ?format=iiif: the same annotations, the same ids.
    whole = web.get(f"/result/{task_id}/iiif/manifest/0/annotations", headers=key).get_json()
    legacy = web.get(f"/result/{task_id}?format=iiif", headers=key).get_json()
    assert whole == legacy and whole["id"] == f"{base}/annotations"
    assert [a["id"] for a in whole["items"]] == [a["id"] for a in page["items"]]

    # Another key's task is unknown; a missing manifest index too.
    assert (
        web.get(
            f"/result/{task_id}/iiif/manifest/0", headers={"X-API-Key": web.other_key}
        ).status_code
        == 404
    )
    assert web.get(f"/result/{task_id}/iiif/manifest/1", headers=key).status_code == 404


def test_v2_viewer_manifest_uses_other_content_in_every_sequence(web) -> None:
    def canvas(n: int) -> dict:
        resource = {"@id": f"{BOOK}/{n}.jpg", "@type": "dctypes:Image"}
        return {
            "@id": f"{BOOK}/canvas/{n}",
            "@type": "sc:Canvas",
            "images": [{"resource": resource}],
        }

    source = {
        "@context": "http://iiif.io/api/presentation/2/context.json",
        "@id": f"{BOOK}/manifest",
        "@type": "sc:Manifest",
        "sequences": [{"canvases": [canvas(0)]}, {"canvases": [f"{BOOK}/canvas/0", canvas(1)]}],
    }
    items = [_canvas_item(0, 0, "ok", [_detection(5, 0.8)]), _canvas_item(1, 1, "ok", [])]
    task_id = _finished_task(web, source, 2, items)
    key = {"X-API-Key": web.key}
    doc = web.get(f"/result/{task_id}/iiif/manifest/0", headers=key).get_json()
    base = f"{PUBLIC}/result/{task_id}/iiif/manifest/0"
    assert doc["@id"] == base
    first, later = doc["sequences"][0]["canvases"][0], doc["sequences"][1]["canvases"][1]
    assert first["otherContent"] == [
        {"@id": f"{base}/canvas/0/annotations", "@type": "sc:AnnotationList"}
    ]
    assert later["otherContent"][0]["@id"] == f"{base}/canvas/1/annotations"
    listing = web.get(_local(first["otherContent"][0]["@id"]), headers=key).get_json()
    assert listing["@type"] == "sc:AnnotationList" and len(listing["resources"]) == 1
    (anno,) = listing["resources"]
    assert anno["@id"] == f"{base}/canvas/0/annotations#detection-0"
    assert anno["motivation"] == ["oa:commenting", "oa:tagging"]
    assert [r["@type"] for r in anno["resource"]] == ["oa:Tag", "dctypes:Text"]


# --- share links ----------------------------------------------------------------------------------


def test_share_link_opens_that_tasks_results_only(web) -> None:
    task_id = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    other_task = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    key = {"X-API-Key": web.key}
    created = web.post(f"/result/{task_id}/shares", json={"ttl_s": 3600}, headers=key)
    assert created.status_code == 201, created.get_data(as_text=True)
    share = created.get_json()
    token = share["token"]
    (entry,) = share["manifests"]
    assert entry["manifest_url"] == f"{PUBLIC}/result/{task_id}/iiif/manifest/0?token={token}"

    # No key: the manifest, its pages and the JSON result open, readable from any origin.
    origin = {"Origin": "https://anyone.example"}
    resp = web.get(entry["manifest_url"][len(PUBLIC) :], headers=origin)
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    page_url = resp.get_json()["items"][0]["annotations"][1]["id"]
    assert page_url.endswith(f"/canvas/0/annotations?token={token}")
    page = web.get(page_url[len(PUBLIC) :], headers=origin)
    assert page.status_code == 200 and len(page.get_json()["items"]) == 2
    anno_id = page.get_json()["items"][0]["id"]
    assert anno_id == f"{page_url}#detection-0"
    assert web.get(f"/result/{task_id}?token={token}").get_json()["task_id"] == task_id
    assert web.get(f"/result/{task_id}?format=yolo&token={token}").status_code == 200

    # Nothing else: not the status, the listing, submitting, other tasks, sharing itself.
    for method, path in [
        ("GET", f"/status/{task_id}?token={token}"),
        ("GET", f"/tasks?token={token}"),
        ("GET", f"/models?token={token}"),
        ("POST", f"/task?token={token}"),
        ("DELETE", f"/terminate/{task_id}?token={token}"),
        ("GET", f"/result/{other_task}?token={token}"),
        ("GET", f"/result/{other_task}/iiif/manifest/0?token={token}"),
        ("GET", f"/result/{task_id}/shares?token={token}"),
        ("POST", f"/result/{task_id}/shares?token={token}"),
    ]:
        resp = web.open(path, method=method, json={"type": "noop"})
        assert resp.status_code == 401, (method, path, resp.status_code)
    assert web.get(f"/result/{task_id}?token=not-a-token").status_code == 401

    # Listed for the key holder (never with its token), then revoked: dead at once.
    listed = web.get(f"/result/{task_id}/shares", headers=key).get_json()["shares"]
    assert [s["share_id"] for s in listed] == [share["share_id"]]
    assert "token" not in listed[0]
    other = {"X-API-Key": web.other_key}
    assert web.get(f"/result/{task_id}/shares", headers=other).status_code == 404
    gone = web.delete(f"/result/{task_id}/shares/{share['share_id']}", headers=other)
    assert gone.status_code == 404
    revoked = web.delete(f"/result/{task_id}/shares/{share['share_id']}", headers=key)
    assert revoked.status_code == 204
    refused = web.get(f"/result/{task_id}?token={token}", headers=origin)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    assert web.get(f"/result/{task_id}/shares", headers=key).get_json()["shares"] == []


def test_share_links_expire_and_never_outlive_the_result(web) -> None:
    from model.api.shares import share_key

    task_id = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    key = {"X-API-Key": web.key}
    redis = web.application.extensions["scriptorium"].redis
    record_expiry = float(redis.hget(f"sc:task:{task_id}", "expires_at"))
    share = web.post(f"/result/{task_id}/shares", json={"ttl_s": 10**7}, headers=key).get_json()
    expires = redis.hget(share_key(share["share_id"]), "expires_at")
    assert float(expires) == record_expiry  # asked for more than the result lives
    assert 0 < redis.ttl(share_key(share["share_id"])) <= 3601
    assert web.post(f"/result/{task_id}/shares", json={"ttl_s": 5}, headers=key).status_code == 422
    assert web.post(f"/result/{task_id}/shares", json={"ttl": 60}, headers=key).status_code == 422

    redis.hset(share_key(share["share_id"]), "expires_at", 1)  # as if its time had passed
    assert web.get(f"/result/{task_id}?token={share['token']}").status_code == 401


def _share(web, task_id: str, key: str) -> dict:
    created = web.post(f"/result/{task_id}/shares", headers={"X-API-Key": key})
    assert created.status_code == 201, created.get_data(as_text=True)
    return created.get_json()


def test_revoking_a_key_ends_the_share_links_behind_it(web) -> None:
    task_id = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    own = _share(web, task_id, web.key)
    by_admin = _share(web, task_id, web.admin_key)  # an admin key shares another key's task
    for link in (own, by_admin):
        assert web.get(f"/result/{task_id}?token={link['token']}").status_code == 200

    # The admin key is revoked (stolen, say): the links it made die, the owner's live on.
    web.keys.revoke("boss")
    refused = web.get(f"/result/{task_id}?token={by_admin['token']}")
    assert refused.status_code == 401, refused.get_data(as_text=True)
    assert refused.get_json()["error"]["code"] == "unauthorized"
    assert web.get(f"/result/{task_id}?token={own['token']}").status_code == 200

    # The task's own key revoked: none of its task's links opens any more.
    web.keys.revoke("web")
    manifest = f"/result/{task_id}/iiif/manifest/0?token={own['token']}"
    assert web.get(f"/result/{task_id}?token={own['token']}").status_code == 401
    assert web.get(manifest).status_code == 401


def test_share_reads_are_limited_per_link_and_per_client_whatever_headers(
    clean_redis: redis.Redis, tmp_path: Path
) -> None:
    web = _web_app(clean_redis, tmp_path, share={"rate": "3/minute", "client_rate": "5/minute"})
    task_id = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    first, second = _share(web, task_id, web.key), _share(web, task_id, web.key)
    # Headers that once took a request out of every limit: a non-Bearer Authorization, or a
    # made-up key (a new one each time: one bucket each).
    bogus = [{"Authorization": "Basic x"}, *({"X-API-Key": f"made-up-{n}"} for n in range(3))]

    def read(link: dict, n: int):
        return web.get(f"/result/{task_id}?token={link['token']}", headers=bogus[n % 4])

    assert [read(first, n).status_code for n in range(4)] == [200, 200, 200, 429]
    limited = read(first, 4)
    assert limited.get_json()["error"]["code"] == "too_many_requests"
    assert "per share" in limited.get_json()["error"]["message"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["Access-Control-Allow-Origin"] == "*"
    # Another link of the same client: its own budget, but the client's is spent after 5.
    assert [read(second, n).status_code for n in range(2)] == [200, 200]
    over = read(second, 2)
    assert over.status_code == 429 and "per share client" in over.get_json()["error"]["message"]
    # The key holder's own reads are the key's to count, not the links'.
    assert web.get(f"/result/{task_id}", headers={"X-API-Key": web.key}).status_code == 200


def test_shared_result_hides_source_secrets_and_the_worker(web) -> None:
    signed = "https://img.example/page.jpg?sig=s3cr3t&expires=99"
    items = [
        {
            **V3_ITEMS[0],
            "source": signed,
            "image_url": "https://user:pw@img.example/page.jpg?token=t0k3n",
        }
    ]
    worker = {"worker": "gpu-host-7", "worker_pid": 4242, "versions": {"torch": "2.14.1"}}
    task_id = _finished_task(
        web, _v3_book(), 3, items, model={"name": "demo", **worker}, inputs=[signed]
    )
    mine = web.get(f"/result/{task_id}", headers={"X-API-Key": web.key}).get_data(as_text=True)
    for secret in ("s3cr3t", "t0k3n", "gpu-host-7", "4242", "2.14.1"):
        assert secret in mine  # the key holder sees their own task whole

    token = _share(web, task_id, web.key)["token"]
    shared = web.get(f"/result/{task_id}?token={token}")
    assert shared.status_code == 200
    text = shared.get_data(as_text=True)
    for secret in ("s3cr3t", "t0k3n", "pw@", "gpu-host-7", "4242", "2.14.1", "worker_pid"):
        assert secret not in text, secret
    body = shared.get_json()
    assert body["items"][0]["source"] == "https://img.example/page.jpg?REDACTED"
    assert body["items"][0]["image_url"] == "https://REDACTED@img.example/page.jpg?REDACTED"
    assert body["provenance"]["model"] == {"name": "demo"}
    assert body["provenance"]["inputs"] == ["https://img.example/page.jpg?REDACTED"]
    iiif = web.get(f"/result/{task_id}?format=iiif&token={token}").get_data(as_text=True)
    assert "s3cr3t" not in iiif


def test_share_links_are_capped_per_task_and_per_key(clean_redis: redis.Redis, tmp_path) -> None:
    web = _web_app(clean_redis, tmp_path, share={"max_per_task": 2, "max_per_key": 3})
    task_a = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    task_b = _finished_task(web, _v3_book(), 3, V3_ITEMS)
    key = {"X-API-Key": web.key}
    links = [_share(web, task_a, web.key), _share(web, task_a, web.key)]
    refused = web.post(f"/result/{task_a}/shares", headers=key)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "too_many_shares"
    assert "this task already has 2" in refused.get_json()["error"]["message"]
    _share(web, task_b, web.key)  # the key's third
    refused = web.post(f"/result/{task_b}/shares", headers=key)
    assert refused.status_code == 409 and "the key 'web'" in refused.get_json()["error"]["message"]
    # A revoked link frees its place, for its task and its key.
    web.delete(f"/result/{task_a}/shares/{links[0]['share_id']}", headers=key)
    _share(web, task_a, web.key)
    assert len(web.get(f"/result/{task_a}/shares", headers=key).get_json()["shares"]) == 2


# --- the operator page ----------------------------------------------------------------------------


def test_console_is_a_static_shell_under_a_strict_policy(web) -> None:
    import re

    web.app_settings.console.viewer_url = (
        'https://v.example/?m={manifest}"><script>alert(1)</script>'
    )
    resp = web.get("/console")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    policy = dict(
        part.strip().split(" ", 1) for part in resp.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert "unsafe" not in resp.headers["Content-Security-Policy"]
    page = resp.get_data(as_text=True)
    # No inline script: every <script> loads a file; the configured URL arrives escaped.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="static/console.js" defer>']
    assert "<script>alert" not in page and "&#34;&gt;&lt;script&gt;" in page
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    script = web.get("/static/console.js")
    assert script.status_code == 200 and "javascript" in script.mimetype
    assert "innerHTML" not in script.get_data(as_text=True)
    script.close()
    assert web.get("/static/console.css").mimetype == "text/css"


def test_readyz_counts_queued_and_running_tasks(web) -> None:
    """What the operator page shows admin keys beside the workers."""
    from model.tasks import fleet
    from model.tasks.store import TaskStore

    services = web.application.extensions["scriptorium"]
    redis, default = services.redis, services.settings.models.default
    fleet.publish(redis, fleet.heartbeat_key("host", 1), {"pid": 1, "models": [default]}, 20)
    store = TaskStore(redis, 3600, 3600)
    for _ in range(3):
        record = store.create("web", "noop", {}, 0, 60)
    store.mark_running(record.id, 1)
    ready = web.get("/readyz").get_json()
    assert (ready["queued"], ready["running"]) == (2, 1)
    assert [(w["pid"], w["models"]) for w in ready["workers"]] == [(1, [default])]


def test_a_shared_view_keeps_the_services_own_links() -> None:
    from model.outputs.redact import shared_view

    own = "https://scriptorium.example/"
    body = {
        "prototype_url": f"{own}result/t1/clusters/0/prototype.png?token=share-token",
        "image_url": "https://img.example/a.jpg?sig=s3cr3t",
        "lookalike": "https://scriptorium.example.evil/x?sig=s3cr3t",
    }
    view = shared_view(body, own)
    assert view["prototype_url"] == body["prototype_url"]  # the link's own token, kept
    assert view["image_url"] == "https://img.example/a.jpg?REDACTED"
    assert view["lookalike"] == "https://scriptorium.example.evil/x?REDACTED"

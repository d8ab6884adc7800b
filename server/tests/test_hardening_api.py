"""Hostile probing of the live API (issue: hardening): each test reproduces what got through.

The fast layer (test_fast_store.py) checks the same rules on the app and the store alone; these
run them through nginx, gunicorn, Redis and the worker as a client meets them.
"""

from __future__ import annotations

import json
import uuid

import psutil
import pytest
import requests

from testkit.iiif_server import v3_canvas, v3_image, v3_manifest
from testkit.memory import peak_rss, tree_rss
from testkit.stack import TERMINAL, Api, Stack

pytestmark = pytest.mark.live

# --- 1. tiny timeouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [1e-9, 1e-4, 1e-3])
def test_a_tiny_timeout_is_refused_at_submit(api: Api, timeout: float) -> None:
    resp = api.submit({"type": "noop", "timeout": timeout})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["details"][0]["loc"] == "timeout"


def test_short_timeouts_end_every_task_and_free_the_queue(stack: Stack) -> None:
    """Before: tasks with a tiny timeout stayed QUEUED/RUNNING for good and counted against
    the key's max_queued. Now the shortest allowed timeout ends every task, with an expiry."""
    client = stack.client(stack.create_key("short-timeouts", "--max-queued", "3"))
    redis = stack.redis()
    ended = []
    for _ in range(8):
        task_id = client.submit_ok({"type": "noop", "timeout": 1})
        ended.append(client.wait(task_id, timeout_s=60))
        assert redis.ttl(f"sc:task:{task_id}") > 0  # its record expires
    assert {body["state"] for body in ended} <= TERMINAL
    # Nothing left counting against the key: it can still queue up to its cap.
    more = [client.submit_ok({"type": "noop", "timeout": 1}) for _ in range(3)]
    for task_id in more:
        assert client.wait(task_id, timeout_s=60)["state"] in TERMINAL


# --- 7. expensive responses ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def skipping_manifest(iiif_server, iiif_pages) -> str:
    """One page with an image and thousands of canvases without one (all skipped)."""
    _, published = iiif_pages[0]
    base = f"{iiif_server.url}/hardening/skips"
    canvases = [v3_canvas(f"{base}/c{i}", f"c{i}", 100, 100, None) for i in range(5000)]
    image = v3_image(published)
    canvases.append(v3_canvas(f"{base}/img", "img", published.width, published.height, image))
    return iiif_server.add_json("hardening/skips.json", v3_manifest(base, "skips", canvases))


def test_status_of_a_huge_manifest_stays_small_and_result_counts_it_all(
    iiif_api: Api, skipping_manifest: str
) -> None:
    task_id = iiif_api.submit_ok({"type": "detect", "input": {"manifest_url": skipping_manifest}})
    body = iiif_api.wait(task_id, timeout_s=120)
    assert body["state"] == "SUCCEEDED", body
    status = iiif_api.status(task_id)
    assert len(status.content) < 100_000, len(status.content)  # 5000 skips were ~0.5 MB
    summary = status.json()["result"]["provenance"]["manifests"][0]
    assert summary["skipped_count"] == 5000 and len(summary["skipped"]) < 5000
    # Listed up to a cap (model/iiif/loader.py MAX_LISTED), counted whole.
    result = iiif_api.request("GET", f"/result/{task_id}").json()
    manifest = result["provenance"]["manifests"][0]
    assert manifest["skipped_count"] == 5000 and 0 < len(manifest["skipped"]) <= 100


def test_annotation_ids_ignore_the_host_header(
    iiif_stack: Stack, iiif_api: Api, skipping_manifest: str
) -> None:
    task_id = iiif_api.submit_ok({"type": "detect", "input": {"manifest_url": skipping_manifest}})
    assert iiif_api.wait(task_id, timeout_s=120)["state"] == "SUCCEEDED"
    resp = iiif_api.request(
        "GET",
        f"/result/{task_id}",
        params={"format": "iiif"},
        headers={"Host": "attacker.example", "X-Forwarded-Host": "attacker.example"},
    )
    assert resp.status_code == 200, resp.text
    assert "attacker.example" not in resp.text
    assert resp.json()["id"].startswith(f"{iiif_stack.base_url}/result/{task_id}")


def test_listing_one_task_of_many_big_ones_is_a_page_read(stack: Stack, api: Api) -> None:
    client = stack.client(stack.create_key("page-lister"))
    ids = [client.submit_ok({"type": "noop"}) for _ in range(12)]
    for task_id in ids:
        client.wait(task_id)
    page = client.request("GET", "/tasks", params={"limit": 1, "offset": 3}).json()
    assert page["total"] == 12 and [t["task_id"] for t in page["tasks"]] == [ids[-4]]
    assert page["next_offset"] == 4
    done = client.request("GET", "/tasks", params={"limit": 5, "state": "SUCCEEDED"}).json()
    assert done["total"] == 12 and len(done["tasks"]) == 5


# --- 8. rate-limit gaps -------------------------------------------------------------------------


def test_the_rate_limit_counts_per_key_across_the_api(stack: Stack) -> None:
    """Before: 5/minute per endpoint let a key make 5 requests on each of four endpoints."""
    key = stack.create_key("spread", "--rate", "5/minute")
    client = stack.client(key)
    task_id = client.submit_ok({"type": "noop"})  # 1
    paths = [f"/status/{task_id}", "/models", "/tasks", f"/result/{task_id}"]
    codes = [client.request("GET", path).status_code for path in paths for _ in range(4)]
    assert codes.count(429) >= len(codes) - 4, codes
    assert stack.client(stack.keys["alice"]).request("GET", "/models").status_code == 200


def test_failed_authentications_are_limited_but_valid_keys_are_not(stack: Stack) -> None:
    try:
        codes = []
        for i in range(40):
            resp = requests.get(
                f"{stack.base_url}/models", headers={"X-API-Key": f"sk_wrong{i}"}, timeout=10
            )
            codes.append(resp.status_code)
            assert resp.headers["Content-Type"].startswith("application/json")
        assert codes[0] == 401 and codes.count(429) >= 20, codes
        refused = requests.get(f"{stack.base_url}/tasks", headers={"X-API-Key": "x"}, timeout=10)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        assert int(refused.headers["Retry-After"]) >= 1
        # A valid key is never slowed by other callers' failures.
        assert stack.client(stack.keys["alice"]).request("GET", "/models").status_code == 200
    finally:  # the budget is shared by the session's stack: give later tests theirs back
        stack.reset_auth_failures()


# --- 12. idempotency keys reused ---------------------------------------------------------------


def test_an_idempotency_key_reused_with_another_body_is_refused(api: Api) -> None:
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.submit({"type": "noop"}, headers=headers)
    assert first.status_code == 202
    same = api.submit({"type": "noop"}, headers=headers)
    assert same.json()["task_id"] == first.json()["task_id"]
    other = api.request(
        "POST",
        "/task",
        data=json.dumps({"type": "noop", "timeout": 30}),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "detect", "input": {"image_urls": ["http://example.org:99999/a.jpg"]}},
        {"type": "detect", "input": {"manifest_url": "http://example.org:70000/m.json"}},
    ],
)
def test_a_port_over_65535_is_a_422_at_submit(api: Api, body: dict) -> None:
    resp = api.submit(body)
    assert resp.status_code == 422, resp.text
    assert "port" in resp.json()["error"]["message"]


# --- 9. deep JSON in a multipart field ---------------------------------------------------------


@pytest.mark.parametrize("field", ["params", "input"])
def test_nested_json_in_a_multipart_field_is_a_400(api: Api, field: str) -> None:
    resp = api.request(
        "POST", "/task", files={"type": (None, "detect"), field: (None, "[" * 1000 + "]" * 1000)}
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in ("too_deep", "malformed_json")


# --- issue 19, 1. a JSON body's memory -------------------------------------------------------


def test_a_big_json_body_is_refused_without_growing_gunicorn(stack: Stack, api: Api) -> None:
    """Before: a 10.5 MB body of small objects raised a gunicorn worker's peak from 72 MB to
    588 MB (parsed whole, then its depth walked) only to be refused. Now it is refused from
    its Content-Length (limits.max_json_body_bytes, 1 MB), unread."""
    one = b'{"a":1},'
    body = b'{"type":"noop","x":[' + one * (10_500_000 // len(one)) + b"{}]}"
    gunicorn = psutil.Process(stack.program_pid("gunicorn"))
    baseline = tree_rss(gunicorn)
    with peak_rss(gunicorn, every_s=0.01) as peak:
        resp = api.request("POST", "/task", data=body, headers={"Content-Type": "application/json"})
    grown = peak[0] - baseline
    print(
        f"gunicorn RSS (master + workers) for a {len(body) / 1e6:.1f} MB JSON body: "
        f"baseline {baseline / 1e6:.0f} MB, peak {peak[0] / 1e6:.0f} MB (+{grown / 1e6:.1f} MB)"
    )
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "body_too_large"
    assert grown < 20e6, f"gunicorn grew by {grown / 1e6:.0f} MB"
    # Under the cap, a body is read as before.
    assert api.submit({"type": "noop", "params": {}}).status_code == 202

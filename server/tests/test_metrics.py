"""GET /metrics: who may read it, and that real tasks move the counters by the right amounts
(read back with prometheus-client's own parser); gunicorn's workers added up; bounded host
labels; the Grafana dashboard refers only to what /metrics exports."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from model.metrics.catalog import ALL, OTHER_HOST, exported_names
from model.metrics.record import Meter
from model.tasks.fleet import HEARTBEAT_TTL_S
from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.iiif_server import IiifServer
from testkit.stack import PROJECT_ROOT, Api, Stack

DASHBOARD = PROJECT_ROOT / "config" / "grafana" / "scriptorium-dashboard.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class UnixConnection(http.client.HTTPConnection):
    """Straight to gunicorn's unix socket, as a process on the VM would (no nginx)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


def direct(stack: Stack, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = UnixConnection(stack.data_dir / "run" / "gunicorn.sock")
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Api:
    return stack.client(stack.create_key("metrics-admin", "--admin"))


def parse(text: str) -> tuple[Samples, set[str]]:
    """Every sample by (name, labels), and every name the text exports."""
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        spec = ALL.get(family.name)
        if spec is not None:
            names |= exported_names(spec)
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, names


def scrape(api: Api) -> Samples:
    resp = api.request("GET", "/metrics")
    assert resp.status_code == 200, resp.text
    return parse(resp.text)[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# --- access -------------------------------------------------------------------------------------


def test_only_this_host_or_an_admin_key_may_read_it(stack: Stack, api: Api, admin: Api) -> None:
    stack.reset_auth_failures()
    anonymous = stack.client(None).request("GET", "/metrics")  # through nginx
    assert anonymous.status_code == 401, anonymous.text
    assert api.request("GET", "/metrics").status_code == 403  # a key, not an admin's
    resp = admin.request("GET", "/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, text = direct(stack, "/metrics")  # on the VM, straight to gunicorn
    assert status == 200 and "scriptorium_queue_depth" in text
    status, _ = direct(stack, "/metrics", {"X-Forwarded-For": "203.0.113.9"})
    assert status == 401  # proxied (however it got here): a key is needed


# --- counters after real tasks ----------------------------------------------------------------


def test_counters_move_by_what_tasks_did(
    stack: Stack, api: Api, admin: Api, image_server: ImageServer, pages
) -> None:
    good = [jpeg_bytes(pages[2]), jpeg_bytes(pages[3])]
    urls = [image_server.add(f"metrics-{i}.jpg", data) for i, data in enumerate(good)]
    missing = f"{image_server.url}/metrics-missing.jpg"
    secret = stack.cli("keys", "webhook-secret", "alice")
    assert secret.returncode == 0
    receiver = _Sink()
    try:
        before = scrape(admin)
        noops = [api.submit_ok({"type": "noop"}) for _ in range(2)]
        hooked = api.submit_ok({"type": "noop", "webhook": {"url": receiver.url}})
        detect = api.submit_ok({"type": "detect", "input": {"image_urls": [*urls, missing]}})
        failed = api.submit_ok(
            {"type": "detect", "input": {"manifest_url": f"{image_server.url}/none.json"}}
        )
        for task_id in [*noops, hooked, detect]:
            assert api.wait(task_id)["state"] == "SUCCEEDED"
        assert api.wait(failed)["state"] == "FAILED"
        assert api.status(detect).json()["progress"] == {"done": 2, "total": 3, "failed": 1}
        deadline = time.monotonic() + 30
        while not receiver.got and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the attempt is counted after its answer
        after = scrape(admin)
    finally:
        receiver.close()

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    assert delta("scriptorium_tasks_submitted_total", type="noop") == 3
    assert delta("scriptorium_tasks_submitted_total", type="detect") == 2
    assert delta("scriptorium_tasks_finished_total", type="noop", state="SUCCEEDED") == 3
    assert delta("scriptorium_tasks_finished_total", type="detect", state="SUCCEEDED") == 1
    assert delta("scriptorium_tasks_finished_total", type="detect", state="FAILED") == 1
    assert delta("scriptorium_pages_processed_total", type="detect") == 2
    assert delta("scriptorium_pages_failed_total", type="detect", code="http_error") == 1
    for stage in ("fetch", "decode", "inference"):  # the failed page never got past its fetch
        assert delta("scriptorium_page_stage_seconds_count", stage=stage) == 2, stage
        assert delta("scriptorium_page_stage_seconds_bucket", stage=stage, le="+Inf") == 2
        assert delta("scriptorium_page_stage_seconds_sum", stage=stage) > 0
    model = "illustrations-demo"
    assert delta("scriptorium_inference_batch_size_sum", model=model) == 2  # pages inferred
    assert 1 <= delta("scriptorium_inference_batch_size_count", model=model) <= 2
    host = "127.0.0.1"
    assert delta("scriptorium_fetch_requests_total", host=host) == 2
    assert delta("scriptorium_fetch_bytes_total", host=host) == sum(len(d) for d in good)
    # The missing image and the missing manifest.
    assert delta("scriptorium_fetch_errors_total", host=host, code="http_error") == 2
    assert (
        delta("scriptorium_webhook_deliveries_total", event="completed", outcome="delivered") == 1
    )
    assert delta("scriptorium_webhook_delivery_seconds_count", event="completed") == 1

    # Gauges, read live; every worker's heartbeat is fresh.
    assert value(after, "scriptorium_redis_up") == 1
    assert value(after, "scriptorium_queue_depth") == 0
    assert value(after, "scriptorium_tasks_running") == 0
    assert value(after, "scriptorium_broker_queue_length", queue="scriptorium") == 0
    assert ("scriptorium_broker_queue_length", (("queue", "scriptorium.webhooks"),)) in after
    workers = value(after, "scriptorium_workers")
    ages = [
        v for (name, _), v in after.items() if name == "scriptorium_worker_heartbeat_age_seconds"
    ]
    assert workers >= 1 and len(ages) == workers
    assert all(0 <= age <= HEARTBEAT_TTL_S for age in ages), ages
    beats = [json.loads(v) for v in _heartbeats(stack)]
    beats = [beat for beat in beats if beat["role"] == "worker"]  # a train-worker loads none
    loads = value(
        after, "scriptorium_model_loads_total", model=model, backend=beats[0]["backends"][model]
    )
    assert loads >= sum(beat["model_loads"] for beat in beats) >= 1


def test_http_requests_are_added_up_across_gunicorn_workers(
    stack: Stack, api: Api, admin: Api
) -> None:
    task_id = api.submit_ok({"type": "noop"})
    api.wait(task_id)
    route = {"route": "/status/<task_id>", "method": "GET"}
    before = scrape(admin)
    for _ in range(20):  # nginx opens a connection per request: both workers answer some
        assert api.status(task_id).status_code == 200
    assert api.status("0" * 32).status_code == 404
    after = scrape(admin)
    assert moved(before, after, "scriptorium_http_requests_total", **route, status="200") == 20
    assert moved(before, after, "scriptorium_http_requests_total", **route, status="404") == 1
    seconds = "scriptorium_http_request_duration_seconds"
    assert moved(before, after, f"{seconds}_count", **route) == 21
    assert moved(before, after, f"{seconds}_bucket", **route, le="+Inf") == 21
    # Each gunicorn worker wrote its own files; the scrape added them all up.
    files = list((stack.data_dir / "run" / "metrics" / "gunicorn").glob("*.db"))
    pids = {re.sub(r"\D", "", f.stem.rpartition("_")[2]) for f in files}
    assert len(pids) >= 2, files


def test_cache_hits_and_misses(iiif_stack: Stack, iiif_server: IiifServer, pages) -> None:
    """On the IIIF stack, whose detection cache is on: the same page twice, a miss then a hit."""
    admin = iiif_stack.client(iiif_stack.create_key("metrics-iiif-admin", "--admin"))
    user = iiif_stack.client(iiif_stack.keys["iiif"])
    url = iiif_server.add("metrics-cache.jpg", jpeg_bytes(pages[4]))
    before = scrape(admin)
    for _ in range(2):
        task_id = user.submit_ok({"type": "detect", "input": {"image_urls": [url]}})
        assert user.wait(task_id)["state"] == "SUCCEEDED"
    after = scrape(admin)
    assert (
        moved(before, after, "scriptorium_cache_requests_total", cache="detections", result="miss")
        == 1
    )
    assert (
        moved(before, after, "scriptorium_cache_requests_total", cache="detections", result="hit")
        == 1
    )
    assert moved(before, after, "scriptorium_page_stage_seconds_count", stage="inference") == 1


# --- the parts alone ----------------------------------------------------------------------------


def test_host_labels_are_bounded(clean_redis: redis.Redis) -> None:
    meter = Meter(clean_redis, max_hosts=2)
    for host in ("a.example", "b.example", "c.example", "a.example"):
        meter.fetched(f"https://{host}/page.jpg", 10)
    fresh = Meter(clean_redis, max_hosts=2)  # another process: same answer, from Redis
    assert fresh.host_label("https://d.example/x") == OTHER_HOST
    assert fresh.host_label("https://b.example/x") == "b.example"
    counts = clean_redis.hgetall("sc:metrics:scriptorium_fetch_requests")
    assert {json.loads(k)[0]: float(v) for k, v in counts.items()} == {
        "a.example": 2,
        "b.example": 1,
        OTHER_HOST: 1,
    }


def test_grafana_dashboard_uses_only_exported_metrics(admin: Api) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs and dashboard["uid"] == "scriptorium"
    used = {name for expr in exprs for name in re.findall(r"\bscriptorium_[a-z0-9_]+", expr)}
    _, exported = parse(admin.request("GET", "/metrics").text)
    assert used and not used - exported, used - exported
    # And every metric the service has is on the dashboard somewhere.
    shown = {spec for spec in ALL.values() if exported_names(spec) & used}
    assert set(ALL.values()) == shown, set(ALL) - {s.name for s in shown}


# --- helpers ------------------------------------------------------------------------------------


def _heartbeats(stack: Stack) -> list[str]:
    client = stack.redis()
    return [v for v in client.mget(list(client.scan_iter("sc:worker:*"))) if v]


class _Sink:
    """A webhook receiver that answers 204 and counts."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.got: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                outer.got.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

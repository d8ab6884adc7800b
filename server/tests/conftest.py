"""Fixtures: one live stack per session, API clients for two keys, a local image server."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from synthetic import RenderedPage, render_page
from testkit import browser as browser_kit
from testkit import live
from testkit.checkpoints import make_in_subprocess
from testkit.iiif_server import IiifServer, Published, jpeg
from testkit.live import starts_processes
from testkit.redis_server import redis_server
from testkit.signals import hear_interrupts
from testkit.stack import Api, Stack, free_port, start_stack

# Webhook deliveries on the session stack: short backoff, attempts and retry window, so that
# test_webhooks.py sees retries, timeouts and giving up in seconds (no other test sends any).
WEBHOOK_TEST_SETTINGS = {
    "SCRIPTORIUM_WEBHOOKS__BACKOFF_INITIAL_S": "0.5",
    "SCRIPTORIUM_WEBHOOKS__BACKOFF_MAX_S": "2",
    "SCRIPTORIUM_WEBHOOKS__RETRY_FOR_S": "6",
    "SCRIPTORIUM_WEBHOOKS__TIMEOUT_S": "1",
    "SCRIPTORIUM_WEBHOOKS__MIN_PROGRESS_INTERVAL_S": "1",
}


def pytest_configure(config: pytest.Config) -> None:
    # Started with SIGINT ignored (a background job): handle it, so that every child this suite
    # starts gets the default again at exec (testkit/signals.py).
    hear_interrupts()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The fast layer does not import a module marked live as a whole (testkit/live.py).
    return live.live_module(collection_path, config)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The `live` mark, for every test that uses a fixture decorated @starts_processes.
    live.mark_live(items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A test not marked live that starts a stack fails (testkit/live.py).
    live.entering(item)


@pytest.fixture(scope="session")
@starts_processes
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"), **WEBHOOK_TEST_SETTINGS)
    stack.create_key("alice")
    stack.create_key("bob")
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def api(stack: Stack) -> Api:
    return stack.client(stack.keys["alice"])


@pytest.fixture(scope="session")
def other_api(stack: Stack) -> Api:
    return stack.client(stack.keys["bob"])


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class ImageServer:
    """Serves files from a folder over HTTP on 127.0.0.1 (stands in for remote image hosts)."""

    root: Path
    url: str

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    root = tmp_path_factory.mktemp("images")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ImageServer(root, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


def jpeg_bytes(page: RenderedPage, quality: int = 90) -> bytes:
    return jpeg(page.image, quality)


@pytest.fixture(scope="session")
def pages() -> list[RenderedPage]:
    """Fresh pages (seeds far from the training range) with known illustration boxes."""
    return [render_page(900_000 + i, n_illustrations=1 + i % 3) for i in range(6)]


@pytest.fixture(scope="session")
@starts_processes
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """YOLO checkpoints made offline (testkit/checkpoints.py): detector, classifier, truncated."""
    return make_in_subprocess(tmp_path_factory.mktemp("checkpoints"))


# --- IIIF: a stack of its own (short read timeout) and a local IIIF image server ---------------


@pytest.fixture(scope="session")
def web_origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[browser_kit.WebOrigins]:
    """Pages served from other origins than the API's (test_browser.py): `allowed` is in the
    IIIF stack's cors.origins, `other` is not."""
    origins = browser_kit.serve_origins(tmp_path_factory.mktemp("web-origins"))
    yield origins
    origins.stop()


@pytest.fixture(scope="session")
@starts_processes
def iiif_stack(
    tmp_path_factory: pytest.TempPathFactory, web_origins: browser_kit.WebOrigins
) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("iiif-stack"),
        # Browser pages of this origin may call it with a key (test_browser.py), and the
        # operator page offers to open shared manifests in the Mirador page served there.
        SCRIPTORIUM_CORS__ORIGINS=json.dumps([web_origins.allowed]),
        SCRIPTORIUM_CONSOLE__VIEWER_URL=f"{web_origins.allowed}/mirador.html?manifest={{manifest}}",
        # A page slower than this fails as a timeout (after one retry) instead of stalling.
        SCRIPTORIUM_FETCH__READ_TIMEOUT_S="1",
        SCRIPTORIUM_FETCH__RETRIES="1",
        # Decompression bombs need not be huge to be refused.
        SCRIPTORIUM_FETCH__MAX_PIXELS=str(40_000_000),
        # Fewer than the 4 download threads, so the tests can see the per-host limit bite:
        # a fixed limit from the start (test_adaptive_fetch.py tests how it adapts).
        SCRIPTORIUM_FETCH__PER_HOST_CONCURRENCY="2",
        SCRIPTORIUM_FETCH__PER_HOST_START="2",
        SCRIPTORIUM_FETCH__LATENCY_TOLERANCE="inf",
        SCRIPTORIUM_CACHE__TTL_S="3600",
    )
    stack.create_key("iiif", "--rate", "100000/second")
    stack.create_key("iiif-other", "--rate", "100000/second")
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def iiif_api(iiif_stack: Stack) -> Api:
    return iiif_stack.client(iiif_stack.keys["iiif"])


@pytest.fixture(scope="session")
def iiif_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IiifServer]:
    server = IiifServer(tmp_path_factory.mktemp("iiif-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_server(iiif_server: IiifServer) -> Iterator[IiifServer]:
    """The same files on 127.0.0.2: loopback too, but not allow-listed for the worker."""
    server = IiifServer(iiif_server.root, host="127.0.0.2")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def iiif_pages(iiif_server: IiifServer) -> list[tuple[RenderedPage, Published]]:
    """Synthetic pages with known boxes, each behind a level-0 Image API 3.0 service."""
    pages = [render_page(910_000 + i, 1200, 1600, n_illustrations=1 + i % 3) for i in range(4)]
    return [(p, iiif_server.publish(f"page{i}", p.image, 3)) for i, p in enumerate(pages)]


# --- The cluster job's corpus and run (test_cluster.py, test_cluster_browser.py) ---------------

# 3 families of 3 and 2 lone motifs, drawn once for each module that uses them.
CLUSTER_SEED = 11


@pytest.fixture(scope="module")
def corpus_urls(iiif_server: IiifServer) -> tuple[list[str], list[int]]:
    from testkit.cluster_corpus import build  # numpy: imported only where it is used

    corpus = build(CLUSTER_SEED, families=3, members=(3, 3), distractors=2)
    urls = [
        iiif_server.add(f"cluster/item{n}.jpg", jpeg(image, 90))
        for n, image in enumerate(corpus.images)
    ]
    return urls, corpus.labels


@pytest.fixture(scope="module")
def url_run(iiif_api: Api, corpus_urls: tuple[list[str], list[int]]) -> dict[str, Any]:
    urls, _ = corpus_urls
    task_id = iiif_api.submit_ok({"type": "cluster", "input": {"image_urls": urls}})
    body = iiif_api.wait(task_id, timeout_s=240)
    assert body["state"] == "SUCCEEDED", body
    return body


# --- A real browser: one Chromium for the whole session ------------------------------------------


@pytest.fixture(scope="session")
@starts_processes
def browser() -> Iterator[object]:
    """Debian's Chromium driven by playwright (never a browser download); skipped, saying why,
    where either is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)"
    )
    executable = browser_kit.chromium()
    if executable is None:
        pytest.skip(
            f"no Chromium at {browser_kit.CHROMIUM} (install_system_packages.sh installs it)"
        )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=browser_kit.CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    """A fresh context and page; what the page logs, fails to load or refuses is kept in
    `page.problems` (CORS failures show only there)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.problems = []
    tab.on("console", lambda m: tab.problems.append(f"console {m.type}: {m.text}"))
    tab.on("pageerror", lambda e: tab.problems.append(f"pageerror: {e}"))
    tab.on("requestfailed", lambda r: tab.problems.append(f"failed: {r.url} {r.failure}"))
    tab.on(
        "response",
        lambda r: r.status >= 400 and tab.problems.append(f"HTTP {r.status}: {r.url}"),
    )
    yield tab
    context.close()


@pytest.fixture(scope="module")
def mirador(web_origins) -> str:
    bundle, reason = browser_kit.mirador_bundle()
    if bundle is None:
        pytest.skip(f"Mirador is not available: {reason}")
    web_origins.add("mirador.min.js", bundle.read_bytes())
    return web_origins.add("mirador.html", browser_kit.MIRADOR_PAGE)


def pytest_terminal_summary(terminalreporter) -> None:
    if browser_kit.ARTIFACTS:
        terminalreporter.write_sep("-", "browser test artifacts")
        for path in browser_kit.ARTIFACTS:
            terminalreporter.write_line(str(path))


# --- The fast layer: a bare redis-server, no worker, no HTTP server ------------------------------


@pytest.fixture(scope="session")
def bare_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A real redis-server of its own (no persistence) for tests of the store and the runner."""
    with redis_server(tmp_path_factory.mktemp("bare-redis")) as port:
        yield redis.Redis(port=port, decode_responses=True)


@pytest.fixture
def clean_redis(bare_redis: redis.Redis) -> redis.Redis:
    bare_redis.flushall()
    return bare_redis


@pytest.fixture
def store(clean_redis: redis.Redis):
    """The task store on the bare Redis: results kept an hour, tombstones two."""
    from model.tasks.store import TaskStore

    return TaskStore(clean_redis, 3600, 7200)


@pytest.fixture
def make_app(clean_redis: redis.Redis, tmp_path: Path):
    """make_app(**settings): the HTTP app alone (Flask's test client) on the bare Redis, with
    these settings; `client.keys` makes API keys, `client.redis` is the Redis it uses."""
    from model.api.app import create_app
    from model.keys import KeyStore
    from model.settings import Settings

    def make(**overrides: object):
        port = clean_redis.connection_pool.connection_kwargs["port"]
        settings = Settings(data_dir=tmp_path, redis={"port": port}, **overrides)
        client = create_app(settings).test_client()
        client.keys = KeyStore(settings.keys_db)
        client.redis = clean_redis
        client.app_settings = settings
        return client

    return make


@pytest.fixture
def app_client(make_app):
    """The HTTP app alone (Flask's test client), on the bare Redis, with one key."""
    client = make_app()
    client.environ_base["HTTP_X_API_KEY"] = client.keys.create("fast")
    return client


@pytest.fixture(scope="session")
@starts_processes
def level1_server(tmp_path_factory: pytest.TempPathFactory, iiif_pages) -> Iterator[str]:
    """The `iiif` reference implementation's image server (PIL, level 1, Image API 2.1 + 3.0)."""
    images = tmp_path_factory.mktemp("level1")
    page, _ = iiif_pages[0]
    page.image.save(images / "page.jpg", format="JPEG", quality=85)
    port = free_port()
    script = Path(sys.executable).parent / "iiif_testserver.py"
    process = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--quiet",
            "--image-dir",
            str(images),
            "--api-versions",
            "2.1,3.0",
            "--manipulators",
            "pil",
        ],
        cwd=images,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/3.0_pil/page/info.json", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(timeout=10)

"""The benchmark's IIIF source: a static file server with a fixed per-request latency (standing in
for a library's image server across a network) that logs every answer's size, plus manifests.

It only reads files from disk (see bench/pages.py: the level-0 layout plus each page's computed
level-2 size), so on a 2-core machine it takes almost no CPU from the service being measured.
HTTP/1.1 with keep-alive, as real servers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.pages import Page, write_info
from testkit.iiif_server import Published, v3_canvas, v3_image, v3_manifest

CONTENT_TYPES = {".json": "application/json", ".jpg": "image/jpeg"}
# info.json files name their server; several hosts share one tree (the slow-hosts phase), so
# the files name this placeholder and each host puts its own URL in as it serves them.
PLACEHOLDER_URL = "http://iiif-host.invalid"


@dataclass(frozen=True)
class Logged:
    path: str
    status: int
    bytes: int
    at: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        host = self.server.host
        host.entered()
        try:
            self._answer(host)
        finally:
            host.left()

    def _answer(self, host: IiifHost) -> None:
        time.sleep(host.latency_s)
        path = unquote(urlsplit(self.path).path)
        file = (host.root / path.lstrip("/")).resolve()
        if host.root not in file.parents or not file.is_file():
            return self._send(path, 404, b"not found", "text/plain")
        body = file.read_bytes()
        if file.suffix == ".json":
            body = body.replace(PLACEHOLDER_URL.encode(), host.url.encode())
        self._send(path, 200, body, CONTENT_TYPES.get(file.suffix, "text/plain"))

    def _send(self, path: str, status: int, body: bytes, content_type: str) -> None:
        self.server.host.record(Logged(path, status, len(body), time.monotonic()))
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    host: IiifHost


@dataclass
class IiifHost:
    root: Path  # the static tree (bench/pages.py tree_root)
    latency_s: float = 0.05
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: int = 0
    max_inflight: int = 0  # requests answered at once, at most, since reset_max_inflight()

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.host = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()

    def record(self, entry: Logged) -> None:
        with self.lock:
            self.log.append(entry)

    def entered(self) -> None:
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def left(self) -> None:
        with self.lock:
            self.inflight -= 1

    def reset_max_inflight(self) -> None:
        with self.lock:
            self.max_inflight = self.inflight

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def image_bytes_since(self, mark: int) -> int:
        with self.lock:
            return sum(
                e.bytes for e in self.log[mark:] if e.status == 200 and e.path.endswith(".jpg")
            )

    def requests_since(self, mark: int) -> int:
        with self.lock:
            return len(self.log) - mark

    def requests_by_kind_since(self, mark: int) -> dict[str, int]:
        """Requests since `mark`: `info.json`, `full` (the full-size image), `sized` (any
        other image), `other` (manifests)."""
        kinds = {"info.json": 0, "full": 0, "sized": 0, "other": 0}
        with self.lock:
            for entry in self.log[mark:]:
                kinds[_kind(entry.path)] += 1
        return kinds

    # --- content ---------------------------------------------------------------------------
    def publish(self, pages: list[Page]) -> None:
        for page in pages:
            write_info(self.root, page, PLACEHOLDER_URL)

    def published(self, page: Page) -> Published:
        return Published(
            page.identifier,
            3,
            f"{self.url}/{page.service_path()}",
            f"{self.url}/{page.full_path()}",
            page.width,
            page.height,
        )

    def manifest(self, name: str, pages: list[Page], service: bool = True, level: int = 2) -> str:
        """A Presentation 3 manifest of `pages`; with `service`, each image names its Image API
        service (so the worker can negotiate a size), else only the full image. Level 2 (the
        default): the worker computes its `w,` request from the manifest, one request per page
        (the host serves the sizes bench/pages.py `ensure_computed` rendered); level 0 without
        sizes: it reads each page's info.json first."""
        base = f"{self.url}/manifests/{name}"
        canvases = [
            v3_canvas(
                f"{base}/canvas/{i}",
                f"p. {i + 1}",
                page.width,
                page.height,
                v3_image(self.published(page), service=service, level=level),
            )
            for i, page in enumerate(pages)
        ]
        doc: dict[str, Any] = v3_manifest(f"{base}/manifest.json", name, canvases)
        target = self.root / "manifests" / name / "manifest.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(doc))
        return f"{base}/manifest.json"

    def full_url(self, page: Page) -> str:
        return f"{self.url}/{page.full_path()}"

    def size_url(self, page: Page, factor_index: int = 1) -> str:
        width, height = page.sizes[factor_index]
        return f"{self.url}/{page.size_path(width, height)}"


def _kind(path: str) -> str:
    if path.endswith("/info.json"):
        return "info.json"
    if path.endswith("/full/max/0/default.jpg"):
        return "full"
    return "sized" if path.endswith(".jpg") else "other"

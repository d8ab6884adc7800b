"""A real IIIF source for the tests: static level-0 Image API 2.1/3.0 trees produced by the `iiif`
reference implementation's static generator (iiif.static), level-1/2 services that resize on
demand (`Dynamic`), plus manifests, served over HTTP with a request log (to count the requests
and bytes the worker actually fetched) and a few misbehaviours (404, slow, 503 + Retry-After,
redirects, refused size forms) that stand in for remote hosts we cannot run."""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from iiif.static import IIIFStatic
from PIL import Image

CONTENT_TYPES = {".json": "application/json", ".jpg": "image/jpeg", ".png": "image/png"}


@dataclass
class Rule:
    status: int | None = None
    delay_s: float = 0.0
    redirect: str | None = None
    fail_times: int = 0  # answer 503 + Retry-After this many times first
    retry_after_s: int = 1


@dataclass
class Logged:
    path: str
    status: int
    bytes: int
    at: float


@dataclass
class Published:
    identifier: str
    version: int
    service_id: str
    full_url: str  # the original JPEG, as a server without an image service offers it
    width: int
    height: int


_SIZED = re.compile(r"full/(max|full|!?\d+,\d*)/0/default\.jpg")


@dataclass
class Dynamic:
    """A level-1/2 Image API service over one image: `full/{size}/0/default.jpg` resized with PIL
    (`max`/`full`, `w,`, `w,h`; `!w,h` at level 2; never larger than the image), `info.json`."""

    image: Image.Image
    version: int
    level: int
    # Answer this status to `w,` requests (what the worker computes from a manifest) while still
    # serving `w,h`: a server that does less than its manifest declares.
    refuse_by_width: int | None = None

    def info(self, service_id: str) -> dict[str, Any]:
        width, height = self.image.size
        sizes = [{"width": width // f, "height": height // f} for f in (4, 2, 1)]
        if self.version == 3:
            return {
                "@context": "http://iiif.io/api/image/3/context.json",
                "id": service_id,
                "type": "ImageService3",
                "protocol": "http://iiif.io/api/image",
                "profile": f"level{self.level}",
                "width": width,
                "height": height,
                "sizes": sizes,
            }
        return {
            "@context": "http://iiif.io/api/image/2/context.json",
            "@id": service_id,
            "protocol": "http://iiif.io/api/image",
            "profile": [f"http://iiif.io/api/image/2/level{self.level}.json"],
            "width": width,
            "height": height,
            "sizes": sizes,
        }

    def answer(self, size: str) -> tuple[int, bytes]:
        if self.refuse_by_width and size.endswith(","):
            return self.refuse_by_width, b"size form not supported"
        target = self._size(size)
        if target is None:
            return 400, b"bad size"
        image = self.image if target == self.image.size else self.image.resize(target)
        return 200, jpeg(image)

    def _size(self, size: str) -> tuple[int, int] | None:
        width, height = self.image.size
        if size in ("max", "full"):
            return width, height
        confined = size.startswith("!")
        w_text, h_text = size.lstrip("!").split(",")
        w = int(w_text)
        if confined:
            if self.level < 2 or not h_text:
                return None
            scale = min(w / width, int(h_text) / height, 1.0)
            return max(1, round(width * scale)), max(1, round(height * scale))
        h = int(h_text) if h_text else max(1, round(height * w / width))
        return (w, h) if 0 < w <= width and 0 < h <= height else None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.inflight += 1
            owner.max_inflight = max(owner.max_inflight, owner.inflight)
        self._answer()

    def _answer(self) -> None:
        path = unquote(urlsplit(self.path).path)
        rule = self.server.owner.rules.get(path)
        if rule is not None:
            if rule.delay_s:
                time.sleep(rule.delay_s)
            if rule.redirect:
                return self._send(path, 302, b"", {"Location": rule.redirect})
            if rule.fail_times > 0:
                rule.fail_times -= 1
                return self._send(path, 503, b"busy", {"Retry-After": str(rule.retry_after_s)})
            if rule.status:
                return self._send(path, rule.status, b"no")
        found = self.server.owner.dynamic_service(path)
        if found is not None:
            return self._dynamic(path, *found)
        root = self.server.owner.root.resolve()
        file = (root / path.lstrip("/")).resolve()
        if root not in file.parents or not file.is_file():
            return self._send(path, 404, b"not found")
        ctype = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        self._send(path, 200, file.read_bytes(), {"Content-Type": ctype})

    def _dynamic(self, path: str, base: str, service: Dynamic) -> None:
        rest = path[len(base) + 1 :]
        if rest == "info.json":
            info = service.info(f"{self.server.owner.url}{base}")
            body = json.dumps(info).encode()
            return self._send(path, 200, body, {"Content-Type": "application/json"})
        match = _SIZED.fullmatch(rest)
        if match is None:
            return self._send(path, 404, b"not found")
        status, body = service.answer(match.group(1))
        self._send(path, status, body, {"Content-Type": "image/jpeg"} if status == 200 else None)

    def _send(self, path: str, status: int, body: bytes, headers: dict[str, str] | None = None):
        owner = self.server.owner
        with owner.lock:
            # Counted until the answer starts: the client cannot have it (and ask again) sooner.
            owner.inflight -= 1
        owner.log.append(Logged(path, status, len(body), time.monotonic()))
        try:
            self.send_response(status)
            # Like public IIIF servers: viewers in a browser (Mirador) read info.json with fetch.
            self.send_header("Access-Control-Allow-Origin", "*")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (read timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: IiifServer


@dataclass
class IiifServer:
    root: Path
    host: str = "127.0.0.1"
    rules: dict[str, Rule] = field(default_factory=dict)
    dynamic: dict[str, Dynamic] = field(default_factory=dict)  # base path -> service
    log: list[Logged] = field(default_factory=list)
    # Requests being answered at once (the worker's per-host limit caps it).
    inflight: int = 0
    max_inflight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._server = _Server((self.host, 0), _Handler)
        self._server.owner = self
        self.url = f"http://{self.host}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()

    # --- content ---------------------------------------------------------------------------
    def add(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{name}"

    def add_json(self, name: str, doc: Any) -> str:
        return self.add(name, json.dumps(doc).encode())

    def publish(self, identifier: str, image: Image.Image, version: int) -> Published:
        """A level-0 static Image API service for `image` (tiles, listed sizes, info.json)."""
        source = self.root / "originals" / f"{identifier}.jpg"
        source.parent.mkdir(parents=True, exist_ok=True)
        image.save(source, format="JPEG", quality=85)
        tree = self.root / f"iiif{version}"
        tree.mkdir(exist_ok=True)  # before the generator, which races itself in threads
        prefix = f"{self.url}/iiif{version}"
        generator = IIIFStatic(
            dst=str(tree),
            tilesize=1024,
            api_version=f"{version}.{1 if version == 2 else 0}",
            prefix=prefix,
        )
        generator.generate(src=str(source), identifier=identifier)
        base = tree / identifier
        if version == 3:
            _add_v3_tile_sizes(base)
        # Full size under the canonical name (`full` in 2.x, `max` in 3.0), as level 0 allows.
        full = base / "full" / ("full" if version == 2 else "max") / "0"
        full.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, full / "default.jpg")
        return Published(
            identifier,
            version,
            f"{prefix}/{identifier}",
            f"{self.url}/originals/{identifier}.jpg",
            image.width,
            image.height,
        )

    def publish_dynamic(
        self, identifier: str, image: Image.Image, version: int, level: int = 2
    ) -> tuple[Published, Dynamic]:
        """A level-1/2 service for `image` at `/dyn{version}/{identifier}` (no files but the
        original, the image resource a manifest names)."""
        source = self.root / "originals" / f"{identifier}.jpg"
        source.parent.mkdir(parents=True, exist_ok=True)
        image.save(source, format="JPEG", quality=85)
        base = f"/dyn{version}/{identifier}"
        service = Dynamic(image.copy(), version, level)
        self.dynamic[base] = service
        published = Published(
            identifier,
            version,
            f"{self.url}{base}",
            f"{self.url}/originals/{identifier}.jpg",
            image.width,
            image.height,
        )
        return published, service

    def dynamic_service(self, path: str) -> tuple[str, Dynamic] | None:
        base = "/".join(path.split("/")[:3])  # /dyn3/<identifier>
        service = self.dynamic.get(base)
        return (base, service) if service is not None else None

    # --- request log -----------------------------------------------------------------------
    def requests_to(self, prefix: str) -> list[Logged]:
        return [entry for entry in self.log if entry.path.startswith(prefix)]


def _add_v3_tile_sizes(base: Path) -> None:
    """The generator names tile sizes the 2.x way (`w,`); Image API 3.0 clients such as
    OpenSeadragon in Mirador ask for `w,h`: the same tile under that name too."""
    for size_dir in base.glob("*/*,"):
        tile = size_dir / "0" / "default.jpg"
        if size_dir.parent.name == "full" or not tile.is_file():
            continue
        with Image.open(tile) as image:
            width, height = image.size
        alias = size_dir.parent / f"{width},{height}"
        if not alias.exists():
            alias.symlink_to(size_dir.name)


# --- manifests --------------------------------------------------------------------------------


def path_of(url: str) -> str:
    return urlsplit(url).path


def v3_canvas(
    canvas_id: str,
    label: str,
    width: int,
    height: int,
    body: dict[str, Any] | None,
) -> dict[str, Any]:
    canvas: dict[str, Any] = {
        "id": canvas_id,
        "type": "Canvas",
        "label": {"en": [label]},
        "width": width,
        "height": height,
        "items": [],
    }
    if body is not None:
        canvas["items"] = [
            {
                "id": f"{canvas_id}/page",
                "type": "AnnotationPage",
                "items": [
                    {
                        "id": f"{canvas_id}/painting",
                        "type": "Annotation",
                        "motivation": "painting",
                        "body": body,
                        "target": canvas_id,
                    }
                ],
            }
        ]
    return canvas


def v3_image(
    page: Published | None, url: str | None = None, service: bool = True, level: int = 0
) -> dict:
    body: dict[str, Any] = {
        "id": url or (page.full_url if page else ""),
        "type": "Image",
        "format": "image/jpeg",
    }
    if page is not None:
        body.update(width=page.width, height=page.height)
        if service:
            body["service"] = [
                {"id": page.service_id, "type": "ImageService3", "profile": f"level{level}"}
            ]
    return body


def v3_manifest(manifest_id: str, label: str, canvases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": manifest_id,
        "type": "Manifest",
        "label": {"en": [label]},
        "items": canvases,
    }


def v2_canvas(canvas_id: str, label: str, width: int, height: int, resource: dict) -> dict:
    return {
        "@id": canvas_id,
        "@type": "sc:Canvas",
        "label": label,
        "width": width,
        "height": height,
        "images": [
            {
                "@type": "oa:Annotation",
                "motivation": "sc:painting",
                "resource": resource,
                "on": canvas_id,
            }
        ],
    }


def v2_image(page: Published) -> dict[str, Any]:
    return {
        "@id": f"{page.service_id}/full/full/0/default.jpg",
        "@type": "dctypes:Image",
        "format": "image/jpeg",
        "width": page.width,
        "height": page.height,
        "service": {
            "@context": "http://iiif.io/api/image/2/context.json",
            "@id": page.service_id,
            "profile": "http://iiif.io/api/image/2/level0.json",
        },
    }


def v2_manifest(manifest_id: str, label: str, canvases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@context": "http://iiif.io/api/presentation/2/context.json",
        "@id": manifest_id,
        "@type": "sc:Manifest",
        "label": label,
        "sequences": [{"@type": "sc:Sequence", "canvases": canvases}],
    }


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

"""What the browser tests need beside the stack: Debian's Chromium, Mirador's bundle from npm (a
test tool, never a runtime dependency), pages served from other origins than the API's, and a
place for screenshots.

Nothing is downloaded but the one npm package: Chromium comes from Debian
(scripts/install_system_packages.sh), playwright drives it (no `playwright install`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testkit.stack import PROJECT_ROOT

CHROMIUM = os.environ.get("SCRIPTORIUM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
MIRADOR = "mirador@4.0.0"
CACHE_DIR = Path(os.environ.get("SCRIPTORIUM_TEST_CACHE", PROJECT_ROOT / "var" / "test-cache"))
ARTIFACTS_DIR = PROJECT_ROOT / "var" / "test-artifacts" / "browser"
# Screenshots and the like written this session (listed at the end of the run).
ARTIFACTS: list[Path] = []
# A page of Mirador's own (served from web origins, with its bundle beside it) that opens
# ?manifest=URL at ?canvas=N, the annotations panel open.
MIRADOR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Mirador</title>
<script src="mirador.min.js"></script>
<style>html, body, #viewer { margin: 0; height: 100%; }</style></head>
<body><div id="viewer"></div>
<script>
  const params = new URLSearchParams(location.search);
  Mirador.viewer({
    id: "viewer",
    windows: [{manifestId: params.get("manifest"), canvasIndex: Number(params.get("canvas") || 0)}],
    window: {sideBarOpen: true, defaultSideBarPanel: "annotations", highlightAllAnnotations: true},
    workspaceControlPanel: {enabled: false},
  });
</script></body></html>
"""


def chromium() -> str | None:
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else None


def mirador_bundle() -> tuple[Path | None, str]:
    """Mirador's UMD bundle (dist/mirador.min.js, React included), fetched once from npm into
    the cache with `npm pack` (the package alone, none of its build dependencies). Returns
    (path, "") or (None, why not)."""
    target = CACHE_DIR / MIRADOR.replace("@", "-") / "mirador.min.js"
    if target.is_file():
        return target, ""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed (Mirador comes from the npm registry)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            packed = subprocess.run(
                [npm, "pack", MIRADOR, "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                timeout=180,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            return None, f"npm could not fetch {MIRADOR} within 180 s (registry unreachable?)"
        tarballs = list(Path(tmp).glob("mirador-*.tgz"))
        if packed.returncode != 0 or not tarballs:
            detail = (packed.stderr or packed.stdout).strip().splitlines()[-1:] or ["no tarball"]
            return None, f"npm could not fetch {MIRADOR}: {detail[0]}"
        with tarfile.open(tarballs[0]) as archive:
            member = archive.extractfile("package/dist/mirador.min.js")
            if member is None:
                return None, f"{MIRADOR} has no dist/mirador.min.js"
            data = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_bytes(data)
    partial.replace(target)
    return target, ""


def artifact(name: str) -> Path:
    """A path for a test artifact (a screenshot), recorded to be listed at the end."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / name
    ARTIFACTS.append(path)
    return path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class WebOrigins:
    """One static file server on 127.0.0.1 reached as two origins: `allowed`
    (http://localhost:<port>, the one put in cors.origins) and `other` (http://127.0.0.1:<port>).
    Both are loopback, so Chromium's local-network rules treat them like the API."""

    root: Path
    port: int
    _server: ThreadingHTTPServer = field(repr=False)

    @property
    def allowed(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def other(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, name: str, data: bytes | str) -> str:
        path = self.root / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return name

    def stop(self) -> None:
        self._server.shutdown()


def serve_origins(root: Path) -> WebOrigins:
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origins = WebOrigins(root, server.server_address[1], server)
    origins.add("blank.html", "<!doctype html><meta charset=utf-8><title>blank</title>")
    return origins

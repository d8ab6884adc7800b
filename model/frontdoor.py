"""What sits in front of gunicorn: nginx's config (rendered from a template, since nginx cannot read
the environment), the upstream socket link a release switches, and the spiped tunnels' keys."""

from __future__ import annotations

import getpass
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote_plus

from model.settings import PROJECT_ROOT, Settings

NGINX_TEMPLATE = Path("config/nginx/scriptorium.conf")
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
SPIPED_KEY_BYTES = 32
# gunicorn.sock is the program `gunicorn`; gunicorn-next.sock is `gunicorn-next`, only up while
# scripts/release.sh restarts `gunicorn`. nginx connects to upstream.sock, a link to one of them.
SOCKETS = ("gunicorn.sock", "gunicorn-next.sock")
UPSTREAM_LINK = "upstream.sock"

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

# Query parameters whose values never reach a log (a name containing any of these, any case):
# API keys sent as ?api_key=, ?key=, ?token=... are refused by the app, but an access log would
# keep them. nginx's access log and gunicorn's (config/gunicorn.conf.py) both use it.
SECRET_QUERY_NAMES = "key|token|auth|secret|passw|signature|credential"
_SECRET_NAME = re.compile(SECRET_QUERY_NAMES, re.IGNORECASE)
_QUERY_IN_TEXT = re.compile(r"\?([^\s'\"]*)")


def render(template: str, values: dict[str, str]) -> str:
    """Replace {{name}}; an unknown name is an error (nginx's own $variables are left alone)."""

    def value(match: re.Match[str]) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise KeyError(f"nginx template names unknown placeholder {match.group(0)}") from None

    return _PLACEHOLDER.sub(value, template)


def redact_query(query: str) -> str:
    """The query string with the value of every secret-looking parameter replaced by REDACTED
    (names are compared decoded, as the app reads them: api%5Fkey is api_key)."""
    parts = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if value and _SECRET_NAME.search(unquote_plus(name)):
            part = f"{name}{eq}REDACTED"
        parts.append(part)
    return "&".join(parts)


def redact_text(text: str) -> str:
    """redact_query on every query string in a log message (a request line, a URI)."""
    return _QUERY_IN_TEXT.sub(lambda m: "?" + redact_query(m.group(1)), text)


def nginx_values(settings: Settings) -> dict[str, str]:
    host = settings.http.host
    listen_host = f"[{host}]" if ":" in host else host
    # As root (development only), workers would otherwise switch to `nobody`, who cannot reach
    # the data dir; as the service user the directive does not apply and is left out.
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    return {
        "user_directive": user,
        "run_dir": str(settings.run_dir),
        "log_dir": str(settings.data_path / "logs"),
        "data_dir": str(settings.data_path),
        "listen": f"{listen_host}:{settings.http.port}",
        "max_body_bytes": str(settings.http.max_body_bytes),
        "secret_query_names": SECRET_QUERY_NAMES,
    }


def nginx_conf_path(settings: Settings) -> Path:
    return settings.run_dir / "nginx.conf"


def write_nginx_conf(settings: Settings, home: Path = PROJECT_ROOT) -> bool:
    """Render the template into <data_dir>/run/nginx.conf; True when the file changed."""
    for sub in NGINX_TEMP_DIRS:
        (settings.run_dir / "nginx" / sub).mkdir(parents=True, exist_ok=True)
    (settings.data_path / "results").mkdir(parents=True, exist_ok=True)
    text = render((home / NGINX_TEMPLATE).read_text(), nginx_values(settings))
    target = nginx_conf_path(settings)
    if target.exists() and target.read_text() == text:
        return False
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return True


def point_upstream(settings: Settings, socket_name: str = SOCKETS[0]) -> None:
    """Atomically make run/upstream.sock point at one gunicorn's socket (relative link)."""
    if socket_name not in SOCKETS:
        raise ValueError(f"unknown gunicorn socket {socket_name!r}; one of {SOCKETS}")
    link = settings.run_dir / UPSTREAM_LINK
    tmp = settings.run_dir / f".{UPSTREAM_LINK}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(socket_name)
    tmp.replace(link)


def ensure_spiped_key(settings: Settings, rotate: bool = False) -> bool:
    """Create the tunnel key (32 random bytes, mode 0600) unless it exists; True when written.

    spiped has no key generator of its own (`-g` means something else)."""
    return ensure_key(settings.spiped_key, rotate)


def ensure_key(path: Path, rotate: bool = False) -> bool:
    """A spiped key at `path` (32 random bytes, mode 0600) unless one exists; True when written."""
    if path.exists() and not rotate:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(SPIPED_KEY_BYTES))
    tmp.replace(path)
    return True


def find_binary(name: str) -> str:
    """nginx lives in /usr/sbin, which is not on an unprivileged user's PATH on Debian."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/bin"
    return shutil.which(name, path=path) or name

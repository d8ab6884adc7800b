"""Gunicorn settings, derived from flask_config.yaml (+ SCRIPTORIUM_* env) via model.settings."""

import json
import os
import re
import shutil

import gunicorn.util
from gunicorn.glogging import Logger

from model.frontdoor import redact_query, redact_text
from model.settings import get_settings

_settings = get_settings()
_logs = _settings.data_path / "logs"

# nginx owns the public entry point (http.port) and proxies to this unix socket in the data dir
# (config/nginx/scriptorium.conf). SCRIPTORIUM_GUNICORN_BIND overrides it (the program
# `gunicorn-next` binds gunicorn-next.sock; "127.0.0.1:8000" would serve TCP without nginx).
bind = os.environ.get("SCRIPTORIUM_GUNICORN_BIND", f"unix:{_settings.run_dir}/gunicorn.sock")
# GET /metrics adds up the HTTP metrics of every worker: prometheus-client's multiprocess mode,
# each worker writing its own files here. Set before any worker imports prometheus_client; one
# folder per program (gunicorn and gunicorn-next run side by side during a release), emptied when
# its master starts (on_starting): counters start again from zero, as after any restart.
_program = re.sub(r"[^A-Za-z0-9.-]", "_", bind.rsplit("/", 1)[-1].removesuffix(".sock"))
_metrics_dir = _settings.metrics_dir / _program
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


worker_class = "gthread"
workers = int(os.environ.get("SCRIPTORIUM_GUNICORN_WORKERS", "2"))
threads = 4
timeout = 60
graceful_timeout = 30
keepalive = 5
# No control socket in ~/.gunicorn (gunicorn >= 27 opens one by default).
control_socket_disable = True

# Request size limits: nginx refuses first, in JSON (large_client_header_buffers 4 8k: a request
# line or a header line up to 8 KB, all headers up to 32 KB). Whatever nginx passes on must pass
# here too: the longest request line gunicorn allows (8190) is nginx's; nginx forwards
# "Name:value" as "Name: value", a byte longer; and 32 KB holds at most ~8500 header fields.
limit_request_line = 8190
limit_request_field_size = 16384
limit_request_fields = 10000

accesslog = "-"
errorlog = "-"
# Privacy: no client address and no user agent in the access log, no query-string secrets.
access_log_format = '%(t)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'


class PrivateLogger(Logger):
    """Logs requests without the values of secret-looking query parameters (?api_key=...: the
    app refuses keys there, but the request line would keep them)."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        path, _, query = environ.get("RAW_URI", "").partition("?")
        query = redact_query(query)
        uri = f"{path}?{query}" if query else path
        atoms["r"] = f"{environ['REQUEST_METHOD']} {uri} {environ['SERVER_PROTOCOL']}"
        atoms["q"] = atoms["{query_string}e"] = query
        atoms["{raw_uri}e"] = uri
        return atoms

    # gunicorn names the request URI in some errors ("Error handling request GET /x?...").
    def error(self, msg, *args, **kwargs):
        super().error(*_redacted(msg, args), **kwargs)

    def warning(self, msg, *args, **kwargs):
        super().warning(*_redacted(msg, args), **kwargs)

    def exception(self, msg, *args, **kwargs):
        super().exception(*_redacted(msg, args), **kwargs)


def _redacted(msg, args):
    return [redact_text(a) if isinstance(a, str) else a for a in (msg, *args)]


logger_class = PrivateLogger

# Codes as the app names them (model/api/errors.py).
_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "request_uri_too_large",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def _write_json_error(sock, status_int, reason, mesg):
    """gunicorn's own error answers (a request it cannot parse) in the app's JSON shape; it has
    no setting for them, only this HTML writer."""
    code = _ERROR_CODES.get(status_int, reason.lower().replace(" ", "_"))
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}) + "\n"
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, (head + body).encode("latin-1", "replace"))


gunicorn.util.write_error = _write_json_error

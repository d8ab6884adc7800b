"""Gunicorn settings, derived from flask_config.yaml (+ SCRIPTORIUM_* env) via model.settings."""

import os

from model.settings import get_settings

_settings = get_settings()
_logs = _settings.data_path / "logs"

# The public entry point unless nginx is put in front (then set SCRIPTORIUM_GUNICORN_BIND to a
# unix socket and let nginx listen on http.port).
bind = os.environ.get("SCRIPTORIUM_GUNICORN_BIND", f"{_settings.http.host}:{_settings.http.port}")
worker_class = "gthread"
workers = int(os.environ.get("SCRIPTORIUM_GUNICORN_WORKERS", "2"))
threads = 4
timeout = 60
graceful_timeout = 30
keepalive = 5
# No control socket in ~/.gunicorn (gunicorn >= 27 opens one by default).
control_socket_disable = True
accesslog = "-"
errorlog = "-"
# Privacy: no client address and no user agent in the access log.
access_log_format = '%(t)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'

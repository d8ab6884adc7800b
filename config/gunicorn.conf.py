"""Gunicorn settings, derived from flask_config.yaml (+ SCRIPTORIUM_* env) via model.settings."""

import os

from model.settings import get_settings

_settings = get_settings()
_logs = _settings.data_path / "logs"

# nginx owns the public entry point (http.port) and proxies to this unix socket in the data dir
# (config/nginx/scriptorium.conf). SCRIPTORIUM_GUNICORN_BIND overrides it (the program
# `gunicorn-next` binds gunicorn-next.sock; "127.0.0.1:8000" would serve TCP without nginx).
bind = os.environ.get("SCRIPTORIUM_GUNICORN_BIND", f"unix:{_settings.run_dir}/gunicorn.sock")
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

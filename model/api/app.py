"""`create_app()`: the HTTP side (Flask + flask-openapi3), like Flask's examples/celery app
factory. It never imports torch (models live in the Celery worker, `model.worker`), nor PIL,
requests or the jobs' worker code (tests check the imported modules)."""

from __future__ import annotations

import logging
import uuid

from flask import Response, g, request
from flask_openapi3 import Info, OpenAPI

from model import __version__
from model.settings import Settings, get_settings

REQUEST_ID_HEADER = "X-Request-Id"


class _RequestIdFilter(logging.Filter):
    """Adds the request id to every log record emitted while serving a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        from flask import has_request_context

        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def create_app(settings: Settings | None = None) -> OpenAPI:
    from model.api import (
        cluster_results,
        console,
        errors,
        listing,
        meta,
        results,
        shares,
        submit,
        tasks,
    )
    from model.api.admission import cap_json_body
    from model.api.auth import SECURITY_SCHEMES
    from model.api.cors import init_cors
    from model.api.exposition import init_http_metrics
    from model.api.limits import init_limits
    from model.api.request_doc import document_task_body, request_schema_components
    from model.services import build_services

    settings = settings or get_settings()
    app = OpenAPI(
        __name__,
        info=Info(
            title="Scriptorium",
            version=__version__,
            description="Illustration detection jobs on digitized documents",
        ),
        security_schemes=SECURITY_SCHEMES,
        validation_error_callback=errors.validation_error_callback,
        doc_prefix="/openapi",
    )
    # First: every request is counted and timed, those other hooks refuse included.
    init_http_metrics(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.http.max_body_bytes
    app.json.sort_keys = False
    # A task ended here (cancelled while queued, or not queued) has its webhook queued with
    # these services' Celery (model/lifecycle/ending.py reads them).
    app.extensions["scriptorium"] = build_services(settings, "api")
    errors.register(app)

    @app.before_request
    def _assign_request_id() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming[:64] if incoming.isalnum() else uuid.uuid4().hex

    @app.before_request
    def _cap_json_bodies() -> None:
        cap_json_body(settings.limits.max_json_body_bytes)

    @app.after_request
    def _return_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # Before the rate limiter and every key check: preflights carry no key.
    init_cors(app, settings.cors.origins)
    app.register_api(submit.api)
    app.register_api(tasks.api)
    app.register_api(meta.models_api)
    app.register_api(meta.jobs_api)
    app.register_api(meta.probes_api)
    app.register_api(listing.api)
    app.register_api(results.api)
    app.register_api(cluster_results.api)
    app.register_api(shares.api)
    app.register_api(console.api)
    # Probes stay unlimited: monitoring must never be told to back off.
    # GET /status counts the request in the round trip that reads the task.
    init_limits(app, settings, [meta.probes_api, console.api], deferred=("tasks.task_status",))
    # The POST /task body is documented by hand (JSON or multipart): add the schemas it uses.
    for name, schema in request_schema_components(settings).items():
        app.components_schemas.setdefault(name, schema)
    document_task_body(app, settings)

    _configure_logging()
    return app


def _configure_logging() -> None:
    """App log lines carry the request id (gunicorn's access log carries it too)."""
    root = logging.getLogger()
    if any(isinstance(f, _RequestIdFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [rid=%(request_id)s] %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(logging.INFO)

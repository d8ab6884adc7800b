"""GET /console: the operator page — a key's tasks with live progress, a task's pages with their
boxes, cancel, share links and "open in viewer"; with an admin key also the queue and the
workers. No build step: one server-rendered HTML shell (templates/console.html) and a script and a
stylesheet served as static files (static/console.*), which do everything through the public API.

The page itself is anonymous (it holds no data); the key is typed in once and kept in the tab's
sessionStorage. Its Content-Security-Policy allows scripts and styles from this origin only (no
inline script, no eval), API calls to this origin only, and images from anywhere over http(s)
(page thumbnails come from the IIIF servers the task read).
"""

from __future__ import annotations

from flask import Response, render_template
from flask_openapi3 import APIBlueprint

from model import __version__
from model.api.services import services

api = APIBlueprint("console", __name__, doc_ui=False)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' http: https: data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@api.get("/console")
def console() -> Response:
    """The operator page (HTML)."""
    page = render_template(
        "console.html",
        viewer_url=services().settings.console.viewer_url,
        version=__version__,
    )
    return Response(page, mimetype="text/html", headers=PAGE_HEADERS)

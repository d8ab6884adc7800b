"""CORS: which web pages may call the API from a browser.

Two policies, both decided before anything else looks at the request:

- Pages of the origins in `cors.origins` may call every route with a key (X-API-Key or Bearer).
  Their preflights (`OPTIONS` + `Access-Control-Request-Method`) are answered here, before the
  rate limiter and authentication: a browser never sends a key with a preflight, so a preflight
  that reached the key check got 401 and the browser refused the real request. A preflight from
  any other origin is refused (403), and its real requests get no CORS headers.
- A request authenticated by a share link (`?token=`, model/api/shares.py) is public by design:
  `Access-Control-Allow-Origin: *` (no credentials), so a viewer on any site can load it. Those
  are plain GETs without custom headers: browsers send them without a preflight.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from model.api.errors import error_response

ALLOW_METHODS = ("GET", "POST", "DELETE", "HEAD")
ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-API-Key", "X-Request-Id")
EXPOSE_HEADERS = ("Location", "Retry-After", "X-Request-Id")
# How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE_S = 600


def normalise_origin(origin: str) -> str:
    """`https://Viewer.example.org/` as browsers send it: `https://viewer.example.org`."""
    return origin.strip().rstrip("/").lower()


def mark_public() -> None:
    """This response may be read by any origin (a share link's request)."""
    g.cors_public = True


def init_cors(app: Flask, origins: list[str]) -> None:
    """Register the hooks; call before the rate limiter is set up, so preflights skip it."""
    allowed = frozenset(normalise_origin(o) for o in origins)

    def allowed_origin() -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin and normalise_origin(origin) in allowed else None

    @app.before_request
    def _answer_preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = allowed_origin()
        if origin is None:
            response = error_response(
                403,
                "origin_not_allowed",
                "this origin may not call the API from a browser (cors.origins)",
            )
            response.headers["Vary"] = "Origin"
            return response
        response = Response(status=204)
        response.headers.update(
            {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ", ".join(ALLOW_METHODS),
                "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
                "Access-Control-Max-Age": str(MAX_AGE_S),
                "Vary": "Origin",
            }
        )
        return response

    @app.after_request
    def _cors_headers(response: Response) -> Response:
        if "Access-Control-Allow-Origin" in response.headers:
            return response  # a preflight answered above
        if g.get("cors_public"):
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif (origin := allowed_origin()) is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            if allowed:
                response.vary.add("Origin")  # another origin may get another answer
            return response
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)
        return response

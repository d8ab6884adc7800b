"""Every error leaves as JSON `{"error": {"code", "message"}}`; no traceback reaches a client."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("scriptorium.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# Any authenticated operation may answer these; blueprints declare them for the OpenAPI document
# (flask-openapi3 would otherwise document 422 in pydantic's own shape, not ours).
COMMON_RESPONSES: dict = {401: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    response = jsonify(body.model_dump(exclude_none=True))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def describe_validation_error(exc: ValidationError, prefix: str = "") -> tuple[str, list[dict]]:
    details = [
        {"loc": prefix + ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    message = "; ".join(f"{d['loc'] or 'body'}: {d['message']}" for d in details)
    return message, details


def validation_error_callback(exc: ValidationError) -> Response:
    """flask-openapi3 hook: request models that fail validation answer 422 in our error shape."""
    message, details = describe_validation_error(exc)
    return error_response(422, "invalid_request", message, details=details)


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # abort(response) from flask-openapi3 validation carries a ready response.
        if exc.response is not None:
            return exc.response
        messages = {413: "request body is larger than the limit"}
        # A 405 says which methods the route has (RFC 9110); werkzeug's headers carry it.
        allow = {k: v for k, v in exc.get_headers() if k == "Allow"}
        return error_response(
            exc.code or 500,
            _http_code(exc),
            messages.get(exc.code or 0, exc.description or ""),
            allow,
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error (request %s)", g.get("request_id"))
        return error_response(
            500,
            "internal_error",
            f"unexpected server error; logs name request {g.get('request_id')}",
        )

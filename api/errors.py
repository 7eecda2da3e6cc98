"""Every error leaves the API as ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

import redis
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

RETRY_AFTER_UNAVAILABLE_S = 5


class ApiError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    return ".".join(parts)


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A message naming each offending field, and the details clients can act on."""
    details = [
        {
            "field": _field(tuple(e.get("loc", ()))),
            "message": e.get("msg", ""),
            "type": e.get("type"),
        }
        for e in errors
    ]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
    return message, details


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = describe_validation(list(exc.errors()))
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: backend unavailable: %s", request.method, request.url.path, exc)
        return error_response(
            503,
            "unavailable",
            "a backing service (Redis or storage) is unavailable; retry later",
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        )

    for exc_type in (redis.RedisError, OperationalError, BotoCoreError, ClientError):
        app.add_exception_handler(exc_type, _unavailable)


def document_errors(app: FastAPI) -> None:
    """Make /openapi.json say what 422s look like here: the error shape above, not FastAPI's."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                invalid = operation.get("responses", {}).get("422")
                if invalid:
                    invalid["description"] = "Invalid request: the message names the field"
                    invalid["content"] = {"application/json": {"schema": error}}
        schemas = spec.get("components", {}).get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]

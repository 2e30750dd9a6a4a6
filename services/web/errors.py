"""The JSON error envelope, ``{"error": {"code", "message", "field"?}}``, and the handlers
that answer every failure with it, under a code that does not change."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from shared.domain.errors import StoreUnavailableError

from .views import ErrorBody

log = structlog.get_logger("provision.api.http")


class ApiError(Exception):
    """An error answered as JSON with a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_response(
    status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The envelope as a response."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def errors(status: int, *codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry of an error status and the codes it carries."""
    return {status: {"model": ErrorBody, "description": ", ".join(codes)}}


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    **errors(401, "unauthorized"),
    **errors(403, "forbidden"),
    **errors(413, "payload_too_large"),
    **errors(503, "store_unavailable"),
    **errors(500, "internal_error"),
}
"""What any ``/v1`` route may answer."""


def install_error_handlers(api: FastAPI) -> None:
    """Answer every failure of ``api`` with the envelope."""

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)

    @api.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Nobody reads the answer; the status is for the request's log line and metrics.
        log.info("http_client_disconnected", path=request.url.path)
        return error_response(400, "client_disconnected", "the client closed the connection mid-request")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(loc) or None
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return error_response(422, "invalid_request", message, field=where)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's own "error parsing the body": one answer for bad input
            return error_response(422, "invalid_request", "the request body is not JSON")
        code = _CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    # The repository reports StoreUnavailableError; the library's own transactions
    # (request_provisioning, request_deprovisioning) let SQLAlchemy's error through, as the
    # command line's error handling also expects.
    @api.exception_handler(StoreUnavailableError)
    @api.exception_handler(OperationalError)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("http_store_unavailable", error=type(exc).__name__, path=request.url.path)
        return error_response(503, "store_unavailable", "the control-plane database is unavailable; retry")

    @api.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "http_internal_error", error=type(exc).__name__, detail=str(exc)[:300], path=request.url.path
        )
        return error_response(500, "internal_error", "internal error; the API's log has the details")

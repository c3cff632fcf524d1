"""HTTP errors of the server: every one is an OpenAI-style JSON body, whatever raised it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from deploylab.engine.async_engine import EngineDeadError, RequestFailedError
from deploylab.errors import (
    DeploylabError,
    EngineOverloadedError,
    InvalidRequestError,
)
from deploylab.server.protocol import error_body

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # what a 429 asks the client to wait

_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    422: "BadRequestError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


class ServerShuttingDownError(DeploylabError):
    """The server's shutdown timeout ended before the request finished."""


class APIError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.headers = headers

    @property
    def err_type(self) -> str:
        """The OpenAI error `type` for this status."""
        return _TYPES.get(self.status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        """The JSON body (also used as the payload of a streamed error event)."""
        return error_body(str(self), self.err_type, self.param, self.status)


class ErrorDetail(BaseModel):
    """The `error` object of an OpenAI error body."""

    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """An OpenAI-style error body (documented in /openapi.json)."""

    error: ErrorDetail


def api_error(exc: DeploylabError, default_param: str | None = None) -> APIError:
    """The HTTP error for an engine or request error: 4xx for the client's, 5xx for ours."""
    if isinstance(exc, EngineOverloadedError):
        return APIError(429, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, (EngineDeadError, ServerShuttingDownError)):
        return APIError(503, str(exc))
    if isinstance(exc, RequestFailedError):
        return APIError(500, str(exc))
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), exc.param or default_param)
    return APIError(400, str(exc))


def install_error_handlers(app: FastAPI, observe: Any) -> None:
    """Route every error (ours, Starlette's 404/405, unexpected exceptions) to a JSON body;
    `observe(status)` counts it."""

    def respond(err: APIError) -> JSONResponse:
        observe(err.status)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.url.path}; see /openapi.json for the API."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return respond(APIError(exc.status_code, message, headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(APIError(400, f"Invalid request: {exc.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error while serving a request", exc_info=exc)
        return respond(APIError(500, f"Internal server error: {exc!r}"))

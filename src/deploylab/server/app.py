"""The FastAPI application: routes, validation and error bodies over an `AsyncEngine`."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from deploylab.errors import (
    DeploylabError,
    EngineOverloadedError,
    InvalidRequestError,
    PromptTooLongError,
)
from deploylab.server.handlers import GenerationHandler
from deploylab.server.metrics import ServerMetrics
from deploylab.server.protocol import ChatCompletionRequest, CompletionRequest, error_body, now

log = logging.getLogger(__name__)


class APIError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param

    @property
    def err_type(self) -> str:
        return {
            400: "BadRequestError",
            404: "NotFoundError",
            413: "RequestTooLargeError",
            422: "BadRequestError",
            429: "RateLimitError",
            503: "ServiceUnavailableError",
        }.get(self.status, "InternalServerError")


@dataclass
class ServerState:
    """What the routes share: the engine once loaded, names, limits and metrics."""

    served_model_name: str
    max_body_bytes: int = 4 * 1024 * 1024
    engine: Any = None
    handler: GenerationHandler | None = None
    metrics: ServerMetrics | None = None
    load_error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)


def create_app(state: ServerState, load_engine: Callable[[], Any] | None = None) -> FastAPI:
    """Build the app; `load_engine` runs in a thread at start-up (health is 503 until it ends)."""

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        task = None
        if load_engine is not None and state.engine is None:
            task = asyncio.get_running_loop().run_in_executor(None, _load, state, load_engine)
        elif state.engine is not None:
            _attach(state, state.engine)
        yield
        if task is not None:
            await asyncio.wait([task], timeout=0)
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="deploylab", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        if state.metrics is not None:
            state.metrics.observe_error(exc.status)
        return JSONResponse(
            error_body(str(exc), exc.err_type, exc.param, exc.status), status_code=exc.status
        )

    def _handler() -> GenerationHandler:
        if state.handler is None:
            raise APIError(503, state.load_error or "The model is still loading; retry shortly.")
        return state.handler

    async def _parse(request: Request, schema: type[Any]) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_body_bytes:
            raise APIError(413, f"Request body over the limit of {state.max_body_bytes} bytes.")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > state.max_body_bytes:
                raise APIError(413, f"Request body over the limit of {state.max_body_bytes} bytes.")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "The JSON body must be an object.")
        try:
            req = schema.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise APIError(400, f"Invalid field '{param}': {first['msg']}", param) from None
        if req.model is not None and req.model != state.served_model_name:
            raise APIError(
                404,
                f"The model '{req.model}' does not exist; this server serves "
                f"'{state.served_model_name}'.",
                "model",
            )
        return req

    async def _generate(req: Any, chat: bool) -> Response:
        handler = _handler()
        try:
            prepared = handler.prepare(req, chat)
            if req.stream:
                stream = handler.stream(prepared)
                first = await anext(stream)  # surfaces admission errors before the 200
                return StreamingResponse(
                    _prepend(first, stream),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            return JSONResponse(await handler.complete(prepared))
        except PromptTooLongError as exc:
            raise APIError(400, str(exc), exc.param or ("messages" if chat else "prompt")) from None
        except InvalidRequestError as exc:
            raise APIError(400, str(exc), exc.param) from None
        except EngineOverloadedError as exc:
            raise APIError(429, str(exc)) from None
        except DeploylabError as exc:
            raise APIError(400, str(exc)) from None

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(await _parse(request, CompletionRequest), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(await _parse(request, ChatCompletionRequest), chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": state.served_model_name,
            "object": "model",
            "created": now(),
            "owned_by": "deploylab",
            "max_model_len": getattr(state.engine, "max_model_len", None),
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Response:
        if state.handler is None:
            status = "error" if state.load_error else "loading"
            return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            return Response(b"", media_type="text/plain; version=0.0.4")
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def _prepend(first: str, rest: Any) -> Any:
    yield first
    async for item in rest:
        yield item


def _load(state: ServerState, load_engine: Callable[[], Any]) -> None:
    try:
        engine = load_engine()
    except Exception as exc:  # reported through /health and the log
        log.exception("model load failed")
        state.load_error = f"Model load failed: {exc}"
        return
    _attach(state, engine)


def _attach(state: ServerState, engine: Any) -> None:
    state.engine = engine
    state.metrics = ServerMetrics(engine.stats, state.served_model_name)
    state.handler = GenerationHandler(engine, state.served_model_name, state.metrics)
    state.ready.set()

"""The FastAPI application: routes, validation and error bodies over an `AsyncEngine`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from deploylab.errors import DeploylabError
from deploylab.server.errors import (
    APIError,
    ErrorResponse,
    ServerShuttingDownError,
    api_error,
    install_error_handlers,
)
from deploylab.server.handlers import GenerationHandler
from deploylab.server.lora_routes import install_lora_routes, lora_model_cards, resolve_model
from deploylab.server.metrics import ServerMetrics
from deploylab.server.model_set import attach_models
from deploylab.server.openapi import install_request_schemas, request_body
from deploylab.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    describe_validation_error,
    now,
)
from deploylab.server.residency import ResidencyManager
from deploylab.server.sleep_routes import install_sleep_routes

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 429, 500, 503)
}


@dataclass
class ServerState:
    """What the routes share: the engine once loaded, names, limits, metrics, shutdown state."""

    served_model_name: str
    max_body_bytes: int = 4 * 1024 * 1024
    engine: Any = None
    handler: GenerationHandler | None = None
    metrics: ServerMetrics | None = None
    load_error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    draining: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and unload (lora_routes)
    residency: Any = None  # a ResidencyManager when the server holds several models
    enable_sleep_mode: bool = False  # the /sleep, /wake_up and /is_sleeping routes

    def begin_shutdown(self, timeout: float) -> None:
        """Stop taking requests; in-flight ones get `timeout` seconds, then fail with a 503
        (streams: an error event and `[DONE]`). Safe to call from a signal handler."""
        if self.draining:
            return
        self.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.call_later, timeout, self._expire, timeout)

    def _expire(self, timeout: float) -> None:
        if self.handler is not None:
            self.handler.abort_all(
                ServerShuttingDownError(
                    f"The server shut down before this request finished (shutdown timeout "
                    f"{timeout:g} s); retry on another replica."
                )
            )


def create_app(state: ServerState, load_engine: Callable[[], Any] | None = None) -> FastAPI:
    """Build the app; `load_engine` runs in a thread at start-up (health is 503 until it ends)."""

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        state.loop = asyncio.get_running_loop()
        task = None
        if load_engine is not None and state.engine is None:
            task = state.loop.run_in_executor(None, _load, state, load_engine)
        elif state.engine is not None:
            _attach(state, state.engine)
        yield
        if task is not None:
            await asyncio.wait([task], timeout=0)
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="deploylab", lifespan=lifespan)
    install_error_handlers(app, _observer(state))
    install_request_schemas(app, [CompletionRequest, ChatCompletionRequest])
    if state.enable_sleep_mode:
        install_sleep_routes(app, state)

    def _handler() -> GenerationHandler:
        if state.draining:
            raise APIError(503, "The server is shutting down; retry on another replica.")
        if state.handler is None:
            raise APIError(503, state.load_error or "The model is still loading; retry shortly.")
        dead = state.engine.dead_reason
        if dead is not None:
            raise APIError(503, f"{dead} The server must be restarted.")
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
            req = schema.model_validate_json(bytes(body))
        except ValidationError as exc:
            message, param = describe_validation_error(schema, exc)
            raise APIError(400, message, param) from None
        return req

    async def _generate(request: Request, req: Any, chat: bool) -> Response:
        handler: Any = _handler()
        lora = None
        if state.residency is not None:  # several models: the request's `model` picks one
            handler = state.residency.handler_for(req.model)
        else:  # one model: the base model or one of its LoRA adapters
            lora = resolve_model(state, req.model)
        headers = getattr(handler, "headers", {})  # e.g. the model's state at arrival
        try:
            handler.engine.check_admission()  # a full queue answers 429 before any work
            prepared = handler.prepare(req, chat)
            if lora is not None:
                prepared.lora_name = prepared.model_name = lora
            if req.stream:
                stream = handler.stream(prepared)
                # surfaces admission errors before the 200
                first = await _unless_disconnected(request, anext(stream))
                return StreamingResponse(
                    _prepend(first, stream),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
                )
            answer = await _unless_disconnected(request, handler.complete(prepared))
            return JSONResponse(answer, headers=headers)
        except _ClientGone:
            return Response(status_code=499)
        except DeploylabError as exc:
            raise api_error(exc, "messages" if chat else "prompt") from None

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest), responses=_ERRORS)
    async def completions(request: Request) -> Response:
        return await _generate(request, await _parse(request, CompletionRequest), chat=False)

    @app.post(
        "/v1/chat/completions",
        openapi_extra=request_body(ChatCompletionRequest),
        responses=_ERRORS,
    )
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, await _parse(request, ChatCompletionRequest), chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        if state.residency is not None:
            return {"object": "list", "data": state.residency.cards()}
        card = {
            "id": state.served_model_name,
            "object": "model",
            "created": now(),
            "owned_by": "deploylab",
            "max_model_len": getattr(state.engine, "max_model_len", None),
        }
        return {"object": "list", "data": [card, *lora_model_cards(state)]}

    install_lora_routes(app, state)

    @app.get("/health")
    async def health() -> Response:
        if state.handler is None:
            status = "error" if state.load_error else "loading"
            return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)
        if state.draining:
            return JSONResponse({"status": "draining", "detail": None}, status_code=503)
        dead = state.engine.dead_reason
        if dead is not None:
            return JSONResponse({"status": "error", "detail": dead}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            return Response(b"", media_type="text/plain; version=0.0.4")
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`; if the client disconnects first, cancel it (its engine request is then
    aborted and its KV blocks freed) and raise _ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise _ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _prepend(first: str, rest: Any) -> Any:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # on a disconnect: abort the engine request now, not at GC


def _observer(state: ServerState) -> Callable[[int], None]:
    def observe(status: int) -> None:
        if state.metrics is not None:
            state.metrics.observe_error(status)

    return observe


def _load(state: ServerState, load_engine: Callable[[], Any]) -> None:
    try:
        engine = load_engine()
    except Exception as exc:  # reported through /health and the log
        log.exception("model load failed")
        state.load_error = f"Model load failed: {exc}"
        return
    _attach(state, engine)


def _attach(state: ServerState, engine: Any) -> None:
    if isinstance(engine, ResidencyManager):
        attach_models(state, engine)
        return
    state.engine = engine
    state.metrics = ServerMetrics(engine.stats, state.served_model_name)
    state.handler = GenerationHandler(engine, state.served_model_name, state.metrics)
    state.ready.set()

"""The simulated OpenAI-compatible server: routes, request checks, start/stop, thread runner."""

from __future__ import annotations

import asyncio
import copy
import gc
import itertools
import json
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from deploylab import __version__
from deploylab.loadtest.sim.api import RequestError, parse_body
from deploylab.loadtest.sim.config import SimConfig
from deploylab.loadtest.sim.engine import Scheduled, SimEngine, SimRequest
from deploylab.loadtest.sim.http import HttpConnection, HttpRequest
from deploylab.loadtest.sim.metrics import SimCollector
from deploylab.loadtest.sim.openai_format import StreamFormat, error_body
from deploylab.loadtest.sim.stats import LatenessHistogram
from deploylab.loadtest.sim.timer import PreciseTimer
from deploylab.loadtest.sim.tokens import PromptCounter, block_hashes


class SimServer:
    """An HTTP server on the running event loop that serves the simulated deployment."""

    def __init__(self, config: SimConfig, tokenizer: Any | None = None) -> None:
        """`tokenizer`: a loaded tokenizer to count prompts with (else `config.tokenizer` is
        loaded, else prompts are counted by the documented approximation)."""
        self.config = config
        if tokenizer is None and config.tokenizer:
            from deploylab.loadtest.text import load_tokenizer

            tokenizer, _ = load_tokenizer(config.tokenizer)
        self.counter = PromptCounter(tokenizer)
        self._base_of = {n: n for m in config.models for n in m.names()}
        self._base_of.update({n: a.base for a in config.adapters for n in a.names()})
        self._adapters = {n for a in config.adapters for n in a.names()}
        self._default_model = config.model_names()[0]
        self._ids = itertools.count()
        self._created = int(time.time())
        self._server: asyncio.Server | None = None
        self._timer: PreciseTimer | None = None
        self.engine: SimEngine | None = None
        self._registry: CollectorRegistry | None = None
        self.port = 0
        self.connections_opened = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 = any free port) and return the port."""
        loop = asyncio.get_running_loop()
        self._timer = PreciseTimer(loop, precise=self.config.precise_timer)
        engine = self.engine = SimEngine(self.config, self._timer)
        self._registry = CollectorRegistry(auto_describe=False)
        collector = SimCollector(
            engine.models,
            engine.kv_usage,
            lambda: (engine.prefix.queries_tokens, engine.prefix.hits_tokens),
            lambda: {
                "faults": dict(engine.faults.counts),
                "model_loads": dict(engine.residency.loads),
            },
        )
        self._registry.register(collector)  # type: ignore[arg-type]
        self._server = await loop.create_server(
            self._new_connection, host, port, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _new_connection(self) -> HttpConnection:
        self.connections_opened += 1
        return HttpConnection(self._handle)

    async def stop(self) -> None:
        """Stop listening and drop pending timers."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._timer is not None:
            self._timer.close()

    # -- routing ----------------------------------------------------------------------------
    def _handle(self, conn: HttpConnection, req: HttpRequest) -> None:
        route = (req.method, req.path)
        if req.method == "POST" and req.path in ("/v1/completions", "/v1/chat/completions"):
            self._completion(conn, req, chat=req.path == "/v1/chat/completions")
        elif route in (("GET", "/health"), ("GET", "/ping")):
            conn.send(200, b"", "text/plain")
        elif route == ("GET", "/v1/models"):
            conn.send_json(200, self._models())
        elif route == ("GET", "/metrics"):
            assert self._registry is not None
            conn.send(200, generate_latest(self._registry), "text/plain; version=0.0.4")
        elif route == ("GET", "/version"):
            conn.send_json(200, {"version": __version__, "server": "deploylab-sim"})
        elif route == ("GET", "/sim/stats"):
            conn.send_json(200, self.stats())
        elif route == ("POST", "/sim/reset_stats"):
            self.reset_stats()
            conn.send_json(200, {"ok": True})
        elif route == ("POST", "/reset_prefix_cache"):
            assert self.engine is not None
            self.engine.prefix.reset()
            conn.send(200, b"", "text/plain")
        elif req.path in ("/v1/completions", "/v1/chat/completions", "/health", "/v1/models"):
            conn.send_json(405, error_body(405, f"{req.method} is not allowed on {req.path}"))
        else:
            conn.send_json(404, error_body(404, f"no route {req.path}"))

    def _models(self) -> dict[str, Any]:
        data = []
        for name in self.config.model_names():
            base = self._base_of[name]
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "deploylab-sim",
                "root": base,
                "parent": base if name in self._adapters else None,
                "max_model_len": self.config.engine.max_model_len,
            }
            data.append(entry)
        return {"object": "list", "data": data}

    def _completion(self, conn: HttpConnection, req: HttpRequest, chat: bool) -> None:
        engine = self.engine
        assert engine is not None
        arrival = req.received
        try:
            body = parse_body(req.body, chat, self.counter)
            model = body.model or self._default_model
            base = self._base_of.get(model)
            if base is None:
                raise RequestError(404, f"The model `{model}` does not exist.", "model")
            prompt = len(body.tokens)
            limit = self.config.engine.max_model_len
            if prompt + (body.max_tokens or 1) > limit:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {prompt + (body.max_tokens or 1)} tokens ({prompt} in the "
                    f"prompt, {body.max_tokens or 1} for the completion). Please reduce the "
                    "length of the prompt or completion.",
                    "max_tokens",
                )
            out, reason = engine.law.output_tokens(
                body.max_tokens, body.ignore_eos, body.min_tokens, limit - prompt
            )
            if prompt + out > engine.kv_capacity:
                raise RequestError(
                    400,
                    f"the request needs {prompt + out} KV tokens but the simulated KV cache "
                    f"holds {engine.kv_capacity}; shorten it or raise engine.kv_capacity_tokens",
                )
        except RequestError as exc:
            conn.send_json(exc.status, error_body(exc.status, str(exc), exc.param))
            return
        plan = engine.faults.plan()
        if plan is not None and plan.error_status is not None:
            status = plan.error_status
            conn.send_json(status, error_body(status, f"simulated fault: HTTP {status}"))
            return
        rid = f"{'chatcmpl' if chat else 'cmpl'}-sim{next(self._ids)}"
        created = int(time.time())
        pc = self.config.prefix_cache
        blocks = block_hashes(body.tokens, pc.block_size, model) if pc.enabled else []
        sim_req = SimRequest(
            rid=rid, model=model, base=base, adapter=model if model in self._adapters else None,
            created=created, chat=chat, stream=body.stream, include_usage=body.include_usage,
            prompt_tokens=prompt, blocks=blocks, output_tokens=out, finish_reason=reason,
            conn=conn, faults=plan, arrival=arrival,
            fmt=StreamFormat(rid, model, created, chat) if body.stream else None,
            continuous_usage=body.continuous_usage,
        )  # fmt: skip
        engine.submit(sim_req)

    # -- introspection ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The simulator's own account: timer accuracy, queue state, faults, model loads."""
        engine = self.engine
        assert engine is not None and self._timer is not None
        finished: dict[str, int] = {}
        for m in engine.models.values():
            for reason, count in m.finished.items():
                finished[reason] = finished.get(reason, 0) + count
        return {
            "timer": {
                "precise": self._timer.precise,
                "token_lateness": engine.lateness.summary(),
                "first_token_lateness": engine.first_token_lateness.summary(),
            },
            "requests": {
                "running": engine.running,
                "waiting": len(engine.waiting),
                "kv_used_tokens": engine.kv_used,
                "kv_capacity_tokens": engine.kv_capacity,
                "finished": finished,
                "client_aborted": engine.aborted,
                "connections_opened": self.connections_opened,
            },
            "faults": {
                **engine.faults.counts,
                "errors_by_status": {str(k): v for k, v in engine.faults.errors_by_status.items()},
            },
            "models": {
                "resident": engine.residency.resident(),
                "loads": {k: v for k, v in engine.residency.loads.items() if v},
                "evictions": engine.residency.evictions,
            },
            "prefix_cache": {
                "queries_tokens": engine.prefix.queries_tokens,
                "hits_tokens": engine.prefix.hits_tokens,
                "blocks": len(engine.prefix),
            },
        }

    def reset_stats(self) -> None:
        """Start the timer-accuracy histograms afresh (e.g. between benchmark phases)."""
        assert self.engine is not None
        self.engine.lateness = LatenessHistogram()
        self.engine.first_token_lateness = LatenessHistogram()


class SimThread:
    """Runs a SimServer on its own event loop in a background thread (tests, benchmarks)."""

    def __init__(
        self,
        config: SimConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        tokenizer: Any | None = None,
    ) -> None:
        self.server = SimServer(config, tokenizer)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="sim")

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT."""
        return f"http://{self._host}:{self.server.port}"

    def stats(self) -> dict[str, Any]:
        """SimServer.stats(), read on the server's loop."""
        return self._call(self._async_stats())

    def record_schedule(self) -> None:
        """From now on, keep what the engine intends for every request (tests of the laws)."""
        assert self.server.engine is not None
        self.server.engine.schedule = []

    def schedule(self) -> list[Scheduled]:
        """The recorded plans, in order of admission (copied on the server's loop)."""
        return list(self._call(self._async_schedule()))

    async def _async_schedule(self) -> list[Scheduled]:
        engine = self.server.engine
        assert engine is not None and engine.schedule is not None
        return [copy.deepcopy(s) for s in engine.schedule]

    async def _async_stats(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.server.stats()))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def __enter__(self) -> SimThread:
        self._thread.start()
        self._call(self.server.start(self._host, self._port))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def serve_forever(
    config: SimConfig, host: str, port: int, on_ready: Callable[[int], None] | None = None
) -> None:
    """Run the simulator until cancelled (the CLI's entry point); `on_ready(port)` once bound."""
    server = SimServer(config)
    bound = await server.start(host, port)
    # Everything alive now lives as long as the process: keep the garbage collector's full
    # passes from walking it (they stalled token writes by tens of milliseconds).
    gc.freeze()
    if on_ready is not None:
        on_ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()

"""A small OpenAI-compatible streaming server with exactly known timings, for load-test tests.

Run as a script: `python stub_server.py` prints `PORT <n>` once it listens on 127.0.0.1.
`POST /control` sets its behaviour (merged into the defaults below), `POST /reset` restores the
defaults and clears the counters, `GET /stats` returns what it saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

DEFAULTS: dict = {
    "models": ["stub-model"],
    "models_route": True,  # False: /v1/models answers 404
    "ttft_ms": 0.0,  # wait before the first token
    "itl_ms": 0.0,  # wait between tokens
    "tokens": None,  # tokens per answer (None: the request's max_tokens)
    "usage": True,  # send a usage chunk when asked with stream_options.include_usage
    "fail_every": 0,  # every k-th request answers fail_status
    "fail_status": 500,
    "drop_every": 0,  # every k-th request drops the connection after its first token
    # peer quirks (llama-cpp-python's server)
    "finish_reason": True,  # False: no event names a finish_reason
    "truncate_every": 0,  # every k-th request ends with [DONE] after one token, no finish
    "models_delay_ms": 0.0,  # /v1/models answers this late (busy one-at-a-time server)
}


class Stub:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cfg = dict(DEFAULTS)
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.arrivals: list[float] = []

    async def control(self, request: web.Request) -> web.Response:
        self.cfg.update(await request.json())
        return web.json_response(self.cfg)

    async def do_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.count,
                "max_in_flight": self.max_in_flight,
                "bodies": self.bodies,
                "arrivals": self.arrivals,
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.cfg["models_delay_ms"] / 1000)
        if not self.cfg["models_route"]:
            raise web.HTTPNotFound()
        data = [{"id": m, "object": "model", "owned_by": "stub"} for m in self.cfg["models"]]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await request.json()
        self.count += 1
        number = self.count
        self.bodies.append(body)
        self.arrivals.append(arrived)
        cfg = self.cfg
        if cfg["fail_every"] and number % cfg["fail_every"] == 0:
            return web.json_response(
                {"error": {"message": "planted failure"}}, status=cfg["fail_status"]
            )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request, body, number, arrived)
        finally:
            self.in_flight -= 1

    async def _stream(
        self, request: web.Request, body: dict, number: int, arrived: float
    ) -> web.StreamResponse:
        cfg = self.cfg
        chat = "messages" in body
        n = cfg["tokens"] if cfg["tokens"] is not None else int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # wait until exactly ttft after the request arrived, then one token every itl
        for i in range(n):
            due = arrived + (cfg["ttft_ms"] + i * cfg["itl_ms"]) / 1000
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            piece = f" tok{i}"
            choice = (
                {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            )
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            if i == 0 and cfg["drop_every"] and number % cfg["drop_every"] == 0:
                request.transport.close()  # type: ignore[union-attr]
                return resp
            if i == 0 and cfg["truncate_every"] and number % cfg["truncate_every"] == 0:
                await resp.write(b"data: [DONE]\n\n")  # cut: no finish_reason
                await resp.write_eof()
                return resp
        if cfg["finish_reason"]:  # a separate event, as llama.cpp and vLLM send it
            reason = "length" if n >= int(body.get("max_tokens") or 16) else "stop"
            empty = {"delta": {}} if chat else {"text": ""}
            finish = {"index": 0, **empty, "finish_reason": reason}
            await resp.write(f"data: {json.dumps({'choices': [finish]})}\n\n".encode())
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if cfg["usage"] and include_usage:
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": n + 7}
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def main() -> None:
    stub = Stub()
    app = web.Application()
    app.router.add_post("/control", stub.control)
    app.router.add_post("/reset", stub.do_reset)
    app.router.add_get("/stats", stub.stats)
    app.router.add_get("/v1/models", stub.models)
    app.router.add_get("/health", stub.health)
    app.router.add_post("/v1/chat/completions", stub.generate)
    app.router.add_post("/v1/completions", stub.generate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)

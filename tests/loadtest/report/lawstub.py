"""A streaming OpenAI-compatible stub whose latency follows a known law, with a Prometheus
`/metrics` that changes over time in a known way; for the report, scrape and sweep tests.

Run as a script: prints `PORT <n>` once it listens on 127.0.0.1. `POST /control` merges
settings into the defaults below, `POST /reset` restores them, `GET /log` lists every
`/metrics` request (perf_counter_ns and the values served, null when it served none).

Laws (`law`):
- `concurrency`: TTFT = base_ms + per_request_ms * n, n = requests in flight at arrival
  (itself included). In a closed loop at concurrency c, n = c: TTFT = base + per_request * c.
- `slots`: `slots` servers, each request holds one for `service_ms` before its first token
  (FIFO wait when all are busy): the highest sustainable rate is slots / service_ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

DEFAULTS: dict = {
    "law": "concurrency",
    "base_ms": 20.0,
    "per_request_ms": 0.0,
    "slots": 4,
    "service_ms": 100.0,
    "tokens": 2,
    "itl_ms": 1.0,
    "metrics": "vllm",  # vllm | sglang | off (404) | junk (an HTML page)
    "fail_every": 0,  # every k-th request answers HTTP 500
    "model": "law-model",
}


class LawStub:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cfg = dict(DEFAULTS)
        self.in_flight = 0
        self.requests = 0
        self.tokens_sent = 0
        self.scrapes = 0
        self.log: list[dict] = []
        self.sem = asyncio.Semaphore(int(self.cfg["slots"]))

    async def control(self, request: web.Request) -> web.Response:
        self.cfg.update(await request.json())
        self.sem = asyncio.Semaphore(int(self.cfg["slots"]))
        return web.json_response(self.cfg)

    async def do_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def get_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": self.cfg["model"], "object": "model", "owned_by": "stub"}]
        return web.json_response({"object": "list", "data": data})

    async def metrics(self, request: web.Request) -> web.Response:
        flavor = self.cfg["metrics"]
        if flavor in ("off", "junk"):
            self.log.append({"ns": time.perf_counter_ns(), "values": None})
            if flavor == "off":
                raise web.HTTPNotFound()
            return web.Response(text="<html><body>metrics live elsewhere</body></html>")
        self.scrapes += 1
        i = self.scrapes
        values = {
            "running": float(self.in_flight),
            "waiting": float(i),
            "kv": (i % 7) / 10,
            "generation": float(self.tokens_sent),
            "queries": 100.0 * i,
            "hits": 30.0 * i,
        }
        self.log.append({"ns": time.perf_counter_ns(), "values": values})
        label = '{model_name="law-model",note="a } brace, a \\" quote"}'
        if flavor == "sglang":
            lines = [
                "# TYPE sglang:num_running_reqs gauge",
                f"sglang:num_running_reqs{label} {values['running']}",
                f"sglang:num_queue_reqs{label} {values['waiting']}",
                f"sglang:token_usage{label} {values['kv']}",
                f"sglang:cache_hit_rate{label} 0.3",
                f"sglang:generation_tokens_total{label} {values['generation']}",
            ]
        else:
            lines = [
                "# HELP vllm:num_requests_running Requests running.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{label} {values['running']}",
                f"vllm:num_requests_waiting{label} {values['waiting']}",
                f"vllm:kv_cache_usage_perc {values['kv']}",
                f"vllm:prefix_cache_queries_total {values['queries']}",
                f"vllm:prefix_cache_hits_total {values['hits']}",
                f"vllm:generation_tokens_total{label} {values['generation']}",
                'vllm:time_to_first_token_seconds_bucket{le="+Inf"} 3.0',
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await request.json()
        self.requests += 1
        if self.cfg["fail_every"] and self.requests % self.cfg["fail_every"] == 0:
            return web.json_response({"error": {"message": "planted failure"}}, status=500)
        self.in_flight += 1
        try:
            cfg = self.cfg
            if cfg["law"] == "slots":
                async with self.sem:
                    await asyncio.sleep(cfg["service_ms"] / 1000)
            else:
                ttft = cfg["base_ms"] + cfg["per_request_ms"] * self.in_flight
                await _sleep_until(arrived + ttft / 1000)
            return await self._stream(request, body)
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, body: dict) -> web.StreamResponse:
        cfg = self.cfg
        chat = "messages" in body
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = int(cfg["tokens"])
        for i in range(n):
            if i:
                await asyncio.sleep(cfg["itl_ms"] / 1000)
            piece = f" t{i}"
            choice = (
                {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            )
            choice["finish_reason"] = "length" if i == n - 1 else None
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            self.tokens_sent += 1
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _sleep_until(deadline: float) -> None:
    while (delay := deadline - time.perf_counter()) > 0:
        await asyncio.sleep(delay)


async def main() -> None:
    stub = LawStub()
    app = web.Application()
    app.router.add_post("/control", stub.control)
    app.router.add_post("/reset", stub.do_reset)
    app.router.add_get("/log", stub.get_log)
    app.router.add_get("/metrics", stub.metrics)
    app.router.add_get("/v1/models", stub.models)
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

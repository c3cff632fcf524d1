"""A probe, not the product: how exact can a Python client be at 512 streams?

A minimal HTTP/1.1 streaming client built on asyncio.Protocol (no per-chunk coroutine; the
first token is stamped in `data_received`) runs the closed-loop case of
benchmarks/loadgen_accuracy.py (b) against `deploylab sim` and prints its TTFT error. It
parses only what it needs (chunked framing, `data:` lines) and handles no errors: it exists to
show what a leaner client than aiohttp reaches on this machine (docs/benchmarks.md).

Run: `chrt -f 10 .venv/bin/python benchmarks/loadgen_lean_client_probe.py [ITL_MS TOKENS STREAMS]`
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from loadgen_harness import SimProcess, pct

TTFT_MS = 50.0


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, data: bytes, done: asyncio.Future[tuple[int, int]]) -> None:
        assert self.transport is not None
        self.buf.clear()
        self.head_done, self.first, self.done = False, 0, done
        self.transport.write(data)
        self.sent = time.perf_counter_ns()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buf = self.buf
        buf += data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self.head_done = True
        while True:  # chunked body, one or more SSE events per chunk
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(buf[:eol], 16)
            if size == 0:
                if len(buf) >= eol + 4:
                    self.done.set_result((self.sent, self.first))
                return
            if len(buf) < eol + 2 + size + 2:
                return
            if not self.first and b'"choices":[{' in buf[eol + 2 : eol + 2 + size]:
                self.first = now
            del buf[: eol + 2 + size + 2]


async def _run(host: str, port: int, streams: int, tokens: int, out: list[float]) -> None:
    loop = asyncio.get_running_loop()
    body = json.dumps(
        {
            "model": "sim-model",
            "messages": [{"role": "user", "content": "hello " * 60}],
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json"
    request += b"\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    start = time.perf_counter()

    async def slot() -> None:
        _, conn = await loop.create_connection(_Conn, host, port)
        while time.perf_counter() < start + 12:
            done: asyncio.Future[tuple[int, int]] = loop.create_future()
            conn.request(request, done)
            sent, first = await done
            if sent / 1e9 > start + 3:  # after a 3 s warm-up
                out.append((first - sent) / 1e6 - TTFT_MS)

    await asyncio.gather(*(slot() for _ in range(streams)))


def main() -> None:
    itl, tokens, streams = (float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    sim_yaml = (
        f"ttft: {{base_ms: {TTFT_MS}}}\nitl: {{base_ms: {itl}}}\nprefix_cache: {{enabled: false}}\n"
        "engine: {max_running: 100000, kv_capacity_tokens: 100000000}\n"
    )
    with SimProcess(sim_yaml, Path(tempfile.mkdtemp())) as sim:
        host, port = sim.url.removeprefix("http://").split(":")
        sim.reset_stats()
        errors: list[float] = []
        uvloop.run(_run(host, int(port), streams, tokens, errors))
        late = sim.stats()["timer"]["first_token_lateness"]
    print(
        f"lean client, ITL {itl:g} ms, {tokens} tokens, {streams} streams: {len(errors)} requests,"
        f" TTFT error p50 {pct(errors, 50):.2f} ms, p90 {pct(errors, 90):.2f} ms, p99 "
        f"{pct(errors, 99):.2f} ms; sim first-token lateness p50/p99 {late['p50_us']}/"
        f"{late['p99_us']} us"
    )


if __name__ == "__main__":
    if len(sys.argv) == 1:
        sys.argv += ["10", "32", "512"]
    main()

"""One streamed OpenAI-style request, timed: the hot path of the load generator.

Clocks are `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux, shared by all processes). The
body is serialised before the send time is taken, so JSON encoding of a long prompt is not
counted as server time. The stream is read in whatever pieces the socket delivers
(`iter_any`), with no line-length limit, and split into server-sent events here.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

READ_BUFSIZE = 8 * 1024 * 1024  # long-context responses must not stall on a small buffer


@dataclass(slots=True)
class RawRecord:
    """Everything measured about one request, in nanoseconds of perf_counter."""

    index: int
    turn: int
    worker: int
    model: str
    session: str | None
    classes: dict[str, str]
    planned_input_tokens: int
    max_tokens: int
    scheduled_ns: int
    sent_ns: int = 0
    end_ns: int = 0
    chunk_ns: list[int] = field(default_factory=list)  # arrivals of chunks carrying text
    status: int | None = None
    prompt_tokens: int | None = None  # the server's usage, when reported
    completion_tokens: int | None = None
    error_kind: str | None = None
    error_detail: str | None = None
    text: str = ""  # the answer (kept for history and, without usage, for counting)


def _content_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    text = choice.get("text")
    if isinstance(text, str):
        return text
    message = choice.get("message")  # a non-streamed chat answer
    if isinstance(message, dict):
        return message.get("content") or ""
    return ""


class _Stream:
    """Accumulates SSE `data:` lines of one response into the record."""

    def __init__(self, rec: RawRecord) -> None:
        self.rec = rec
        self.pending = bytearray()
        self.pieces: list[str] = []
        self.done = False

    def feed(self, data: bytes, now: int) -> None:
        self.pending += data
        start = 0
        while True:
            nl = self.pending.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self.pending[start:nl]).rstrip(b"\r")
            start = nl + 1
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)
        del self.pending[:start]

    def _event(self, payload: bytes, now: int) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            event = json.loads(payload)
        except ValueError:
            self.fail("bad_response", f"not JSON: {payload[:200]!r}")
            return
        if not isinstance(event, dict):
            return
        if "error" in event:
            err = event["error"]
            detail = err.get("message") if isinstance(err, dict) else str(err)
            self.fail("stream_error", str(detail)[:500])
            return
        self.absorb(event, now)

    def absorb(self, event: dict[str, Any], now: int) -> None:
        content = _content_of(event)
        if content:
            self.rec.chunk_ns.append(now)
            self.pieces.append(content)
        usage = event.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.rec.completion_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.rec.prompt_tokens = usage["prompt_tokens"]

    def fail(self, kind: str, detail: str) -> None:
        if self.rec.error_kind is None:
            self.rec.error_kind, self.rec.error_detail = kind, detail


async def _on_body_sent(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
) -> None:
    wire = ctx.trace_request_ctx
    if isinstance(wire, list) and not wire:
        wire.append(time.perf_counter_ns())


def wire_send_tracer() -> aiohttp.TraceConfig:
    """Timestamps a request when its body is written to the socket.

    Before Python 3.12, aiohttp writes the body in a separately scheduled task, which runs only
    after every callback already queued on the loop: under load (a burst of streamed chunks)
    that is milliseconds after `session.post()` is called. `send_streaming` takes the send time
    from this hook, so TTFT starts when the request is on the wire and the deferral counts as
    schedule lateness instead (measured against `deploylab sim` at 512 streams: TTFT error
    p50 60 ms before, 7 ms after; see docs/benchmarks.md).
    """
    tracer = aiohttp.TraceConfig()
    tracer.on_request_chunk_sent.append(_on_body_sent)
    return tracer


async def send_streaming(
    session: aiohttp.ClientSession, url: str, body: bytes, rec: RawRecord
) -> None:
    """POST `body` to `url`, read the streamed answer, fill `rec` (errors included).

    Never raises, except CancelledError (the record is marked `cancelled` first). The send
    time is when the body reached the socket if the session has `wire_send_tracer()`, else
    just before the request was handed to aiohttp.
    """
    stream = _Stream(rec)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    rec.sent_ns = time.perf_counter_ns()
    wire: list[int] = []
    try:
        async with session.post(url, data=body, headers=headers, trace_request_ctx=wire) as resp:
            rec.status = resp.status
            if resp.status != 200:
                detail = (await resp.text())[:500]
                stream.fail(f"http_{resp.status}", detail)
                return
            if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                payload = await resp.read()
                now = time.perf_counter_ns()
                try:
                    stream.absorb(json.loads(payload), now)
                except ValueError:
                    stream.fail("bad_response", f"not JSON: {payload[:200]!r}")
                return
            async for data in resp.content.iter_any():
                stream.feed(data, time.perf_counter_ns())
                if stream.done:
                    break
            if not stream.done and rec.error_kind is None:
                stream.fail("disconnected", "the stream ended without [DONE]")
    except asyncio.CancelledError:
        stream.fail("cancelled", "the run was interrupted")
        raise
    except TimeoutError:
        stream.fail("timeout", "no complete answer within the request timeout")
    except aiohttp.ClientError as exc:
        # before any response: the target refused or reset the connection; after: it dropped
        kind = "connection" if rec.status is None else "disconnected"
        stream.fail(kind, f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if wire:
            rec.sent_ns = wire[0]
        rec.end_ns = time.perf_counter_ns()
        rec.text = "".join(stream.pieces)
        if rec.error_kind is None and not rec.chunk_ns:
            stream.fail("empty_output", "the answer held no text")

"""One streamed OpenAI-style request, timed: the hot path of the load generator.

Clocks are `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux, shared by all processes). The
body is serialised before the send time is taken, so JSON encoding of a long prompt is not
counted as server time. The HTTP exchange itself (`http_client`) stamps the send and every
event's arrival; this module turns the events into the record.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from deploylab.loadtest.http_client import ConnectionPool, Endpoint
from deploylab.loadtest.http_exchange import Exchange
from deploylab.loadtest.pacing import Pacer


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
    finish_reasons: dict[int, str] = field(default_factory=dict)  # choice index -> reason


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


_TRUNCATED = (
    "the answer ended without a finish_reason in any choice: the server cut it short "
    "(llama-cpp-python's server does when another request waits for its model; start it "
    "with --interrupt_requests False)"
)


class _Stream:
    """Decodes the `data:` payloads of one response into the record."""

    def __init__(self, rec: RawRecord) -> None:
        self.rec = rec
        self.pieces: list[str] = []

    def event(self, payload: bytes, now: int) -> None:
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
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                index = choice.get("index")
                key = index if isinstance(index, int) else 0
                self.rec.finish_reasons[key] = choice["finish_reason"]
        usage = event.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.rec.completion_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.rec.prompt_tokens = usage["prompt_tokens"]

    def fail(self, kind: str, detail: str) -> None:
        if self.rec.error_kind is None:
            self.rec.error_kind, self.rec.error_detail = kind, detail


async def send_streaming(
    pool: ConnectionPool,
    endpoint: Endpoint,
    body: bytes,
    rec: RawRecord,
    timeout_s: float,
    pacer: Pacer | None = None,
) -> None:
    """POST `body` to `endpoint`, read the streamed answer, fill `rec` (errors included).

    Never raises, except CancelledError (a request still in flight is marked `cancelled`).
    The send time is taken at the socket write of the request; each chunk's time is the
    arrival of the read that completed it (see `http_conn`). Events are decoded once the
    answer is complete (or failed), in a `pacer` slice when given, so decoding never delays a
    read.
    """
    exchange = Exchange()
    rec.sent_ns = time.perf_counter_ns()
    try:
        await pool.send(endpoint, body, exchange, timeout_s)
        if pacer is not None:
            await pacer.turn()
    finally:
        _settle(exchange, rec, cancelled=exchange.end_ns == 0)


MODEL_STATE_HEADER = "x-deploylab-model-state"


def _settle(exchange: Exchange, rec: RawRecord, cancelled: bool) -> None:
    """Fill the record from a finished (or failed, or cancelled) exchange."""
    stream = _Stream(rec)
    rec.sent_ns = exchange.sent_ns or rec.sent_ns
    rec.status = exchange.status
    state = exchange.headers.get(MODEL_STATE_HEADER)
    if state:  # our server tells the model's state on arrival (resident, sleeping, ...)
        rec.classes["model_state"] = state
    if exchange.status is not None and exchange.status != 200:
        detail = bytes(exchange.body[:2000]).decode("utf-8", errors="replace")[:500]
        stream.fail(f"http_{exchange.status}", detail)
    elif exchange.sse:
        for now, payload in exchange.events:
            stream.event(payload, now)
    elif exchange.status == 200 and exchange.error is None and not cancelled:
        payload = bytes(exchange.body)
        try:
            stream.absorb(json.loads(payload), exchange.end_ns)
        except ValueError:
            stream.fail("bad_response", f"not JSON: {payload[:200]!r}")
    if cancelled:
        stream.fail("cancelled", "the run was interrupted")
    elif exchange.error is not None:
        stream.fail(*exchange.error)
    elif exchange.sse and not exchange.done:
        stream.fail("disconnected", "the stream ended without [DONE]")
    elif exchange.status == 200 and not rec.finish_reasons:
        stream.fail("truncated", _TRUNCATED)
    rec.end_ns = exchange.end_ns or time.perf_counter_ns()
    rec.text = "".join(stream.pieces)
    if rec.error_kind is None and not rec.chunk_ns:
        stream.fail("empty_output", "the answer held no text")

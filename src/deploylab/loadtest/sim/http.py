"""A lean HTTP/1.1 server connection (asyncio.Protocol) for the simulator's hot path.

Why not a framework: the simulator emits every token from a timer callback, so writes must be
plain synchronous `transport.write` calls, and per-request overhead must stay far below the
load generator's. This handles what OpenAI clients send: keep-alive, pipelined requests,
`Content-Length` and chunked request bodies, `Expect: 100-continue`; responses are either
sized or chunked (for server-sent events).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(slots=True)
class HttpRequest:
    """One parsed request."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received: float  # time.monotonic() when the request was complete


Handler = Callable[["HttpConnection", HttpRequest], None]


def _chunked_body(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a complete chunked body starting at `start`: (body, end offset), None if partial."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # no trailers expected; skip them if sent
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests one at a time and writes their responses."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False
        self._keep_alive = True
        self._continue_sent = False
        self.on_lost: Callable[[], None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self.busy:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    # -- parsing ------------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        while not self.busy and not self.closed and buf:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self._fail(431, "request headers too large")
                return
            lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self._fail(400, "malformed request line")
                return
            method, target, version = parts
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                decoded = _chunked_body(buf, head_end + 4)
                if decoded is None:
                    self._maybe_continue(headers)
                    return
                body, end = decoded
            else:
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    self._fail(400, "bad Content-Length")
                    return
                if length > MAX_BODY_BYTES:
                    self._fail(413, "request body too large")
                    return
                end = head_end + 4 + length
                if len(buf) < end:
                    self._maybe_continue(headers)
                    return
                body = bytes(buf[head_end + 4 : end])
            del buf[:end]
            self._continue_sent = False
            conn = headers.get("connection", "").lower()
            self._keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            path, _, query = target.partition("?")
            self.busy = True
            request = HttpRequest(method, path, query, headers, body, time.monotonic())
            self._handler(self, request)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if not self._continue_sent and headers.get("expect", "").lower() == "100-continue":
            self._continue_sent = True
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fail(self, status: int, message: str) -> None:
        self._keep_alive = False
        self.busy = True
        self.send_json(
            status, {"error": {"message": message, "type": "BadRequest", "code": status}}
        )

    # -- responses ----------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _head(self, status: int, content_type: str, extra: str) -> bytes:
        reason = _REASONS.get(status, "Error")
        conn = "keep-alive" if self._keep_alive else "close"
        return (
            f"HTTP/1.1 {status} {reason}\r\nServer: deploylab-sim\r\nContent-Type: {content_type}"
            f"\r\nConnection: {conn}\r\n{extra}"
        ).encode("latin-1")

    def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """Write a complete sized response and finish the request."""
        self._write(self._head(status, content_type, f"Content-Length: {len(body)}\r\n\r\n") + body)
        self._finish()

    def send_json(self, status: int, obj: Any) -> None:
        """Write a JSON response and finish the request."""
        self.send(status, json.dumps(obj, separators=(",", ":")).encode())

    def start_stream(self, content_type: str = "text/event-stream") -> None:
        """Write the headers of a chunked (streamed) 200 response."""
        self._write(
            self._head(
                200, content_type, "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
        )

    def write_chunk(self, data: bytes) -> None:
        """Write one chunk of a streamed response."""
        self._write(b"%x\r\n%b\r\n" % (len(data), data))

    def write_framed(self, data: bytes) -> None:
        """Write bytes already framed as chunks (see StreamFormat.framed_token)."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def end_stream(self, last: bytes = b"") -> None:
        """Write the final data (if any) and the terminating chunk, and finish the request."""
        if last:
            self._write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))
        else:
            self._write(b"0\r\n\r\n")
        self._finish()

    def abort(self) -> None:
        """Drop the connection abruptly (RST), as a crashed server or proxy would."""
        self.on_lost = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def _finish(self) -> None:
        self.busy = False
        self.on_lost = None
        if not self._keep_alive:
            if self.transport is not None and not self.closed:
                self.transport.close()
            self.closed = True
        elif self._buf:
            asyncio.get_running_loop().call_soon(self._parse)

"""The load generator's HTTP/1.1 client: a pool of keep-alive connections per endpoint.

Why not a client library: at hundreds of concurrent streams a server writes one token to every
stream at once, and a client that handles each chunk in its own coroutine wake-up stamps the
last of them milliseconds late (aiohttp: about 15 us per chunk on the 2-core dev VM, so a
first token could be stamped tens of ms after it arrived; docs/benchmarks.md). Here every time
is taken where the bytes are (`http_conn`): the send time at the socket write of the request,
each read's arrival from the kernel's receive stamp, and the framing is parsed as bytes come,
each `data:` line kept with its arrival time. Decoding the events' JSON is left to the caller,
after the answer is complete, off the path that stamps arrivals.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from deploylab import __version__
from deploylab.loadtest.http_conn import (
    READ_SIZE,
    Connection,
    SocketConnection,
    TransportConnection,
)
from deploylab.loadtest.http_exchange import Exchange

CONNECT_TIMEOUT_S = 30.0
_perf_ns = time.perf_counter_ns


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed `http(s)://host[:port]/path` with the request head prepared once."""

    host: str
    port: int
    tls: bool
    head: bytes  # request line and fixed headers, up to `Content-Length: `

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: deploylab/{__version__}"
            "\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: "
        ).encode("latin-1")
        return cls(parts.hostname, port, tls, head)


class ConnectionPool:
    """Keep-alive connections per endpoint, no limit on their number; one per event loop.

    `send` never raises except CancelledError: failures land in the Exchange's `error` with
    the kinds the load tester reports (`connection`, `disconnected`, `timeout`,
    `bad_response`).
    """

    def __init__(self, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._addresses: dict[tuple[str, int], list[Any]] = {}
        self._tls: ssl.SSLContext | None = None
        self._buffer = bytearray(READ_SIZE)  # plain sockets read into it, one at a time
        self.opened = 0  # connections made so far

    async def send(
        self, endpoint: Endpoint, body: bytes, exchange: Exchange, timeout_s: float
    ) -> None:
        """POST `body` and wait until the answer is complete, failed, or timed out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._idle_connection(endpoint)
        if conn is None:
            exchange.sent_ns = _perf_ns()
            connect_s = min(timeout_s, self.connect_timeout_s)
            try:
                conn = await asyncio.wait_for(self._connect(endpoint), connect_s)
            except TimeoutError:
                exchange.error = ("timeout", f"no connection within {connect_s:g} s")
            except OSError as exc:  # refused, unreachable, TLS failures
                exchange.error = ("connection", f"{type(exc).__name__}: {exc}"[:300])
            if conn is None:
                exchange.end_ns = _perf_ns()
                return
        waiter: asyncio.Future[None] = loop.create_future()
        conn.timer = loop.call_at(deadline, conn.on_timeout)
        conn.start(endpoint.head + b"%d\r\n\r\n" % len(body) + body, exchange, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if conn.exchange is exchange:  # the answer is not complete: drop the connection
                conn.fail("cancelled", "the run was interrupted")
            raise

    def _idle_connection(self, endpoint: Endpoint) -> Connection | None:
        idle = self._idle.get((endpoint.host, endpoint.port, endpoint.tls))
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, endpoint: Endpoint) -> Connection:
        idle = self._idle.setdefault((endpoint.host, endpoint.port, endpoint.tls), [])
        loop = asyncio.get_running_loop()
        if endpoint.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            _, conn = await loop.create_connection(
                lambda: TransportConnection(idle, self._all),
                endpoint.host,
                endpoint.port,
                ssl=self._tls,
            )
            self.opened += 1
            return conn
        key = (endpoint.host, endpoint.port)
        if key not in self._addresses:
            self._addresses[key] = await loop.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_STREAM
            )
        error: OSError = OSError(f"no address for {endpoint.host}")
        for family, kind, proto, _, address in self._addresses[key]:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            self.opened += 1
            return SocketConnection(sock, self._buffer, idle, self._all)
        raise error

    def close(self) -> None:
        """Drop every connection."""
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()

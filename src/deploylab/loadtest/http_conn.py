"""Keep-alive HTTP/1.1 connections that time every byte where it arrives.

Plain `http://` targets use a non-blocking socket read straight from the event loop
(`add_reader`) with kernel receive time stamps (`SO_TIMESTAMPNS`, Linux): each read carries the
time its last byte reached this host, so a busy client loop delays when an event is parsed,
not when it is said to have arrived. Elsewhere, and for `https://` (asyncio's TLS transport),
a read is stamped when the loop hands it over (`data_received`). Either way the bytes are
parsed at once (`http_wire`) and each event is kept with its time (`http_exchange`).
"""

from __future__ import annotations

import asyncio
import platform
import socket
import struct
import sys
import time

from deploylab.loadtest.http_exchange import Exchange
from deploylab.loadtest.http_wire import ProtocolError, ResponseParser

_perf_ns = time.perf_counter_ns
_wall_ns = time.time_ns
READ_SIZE = 256 * 1024
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) has this value in Linux's generic socket ABI; Python's
# socket module does not name it.
_SO_TIMESTAMPNS = 35
KERNEL_STAMPS = sys.platform == "linux" and not platform.machine().startswith(
    ("alpha", "mips", "parisc", "sparc")
)
_TIMESPEC = struct.Struct("@ll")
_STALE_NS = 10_000_000_000  # a kernel stamp this old is not believed


class Connection:
    """What every connection does: one request at a time, its answer parsed into an Exchange.

    Subclasses do the I/O and call `received` / `lost`.
    """

    def __init__(self, idle: list[Connection], registry: set[Connection]) -> None:
        self.idle = idle  # the pool's idle list for this endpoint
        self.registry = registry  # the pool's open connections
        registry.add(self)
        self.closed = False
        self.parser: ResponseParser | None = None
        self.exchange: Exchange | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self, request: bytes, exchange: Exchange, waiter: asyncio.Future[None]) -> None:
        """Write a request; `waiter` is resolved when the answer is complete or failed."""
        self.exchange, self.waiter = exchange, waiter
        if self.parser is None:
            self.parser = ResponseParser(exchange)
        else:
            self.parser.reset(exchange)
        exchange.sent_ns = _perf_ns()
        self._write(request)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.registry.discard(self)
            self._abort()

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def _answered(self) -> None:
        """The caller may go on (the answer is complete, failed, or [DONE] arrived)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, kind: str, detail: str) -> None:
        """End the exchange in progress with an error and drop the connection."""
        ex = self.exchange
        if ex is not None and (self.waiter is None or not self.waiter.done()):
            ex.error = (kind, detail)
            ex.end_ns = _perf_ns()
        self.exchange = None
        self._answered()
        self.close()

    def on_timeout(self) -> None:
        self.timer = None
        self.fail("timeout", "no complete answer within the request timeout")

    def received(self, data: bytes, now: int) -> None:
        """Bytes that arrived at `now` (perf_counter_ns)."""
        ex, parser = self.exchange, self.parser
        if ex is None or parser is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            complete = parser.feed(data, now)
        except ProtocolError as exc:
            self.fail("bad_response", f"malformed HTTP response: {exc}")
            return
        if complete:
            if not ex.end_ns:
                ex.end_ns = now
            self.exchange = None
            self._answered()
            if parser.keep_alive and not self.closed:
                self.idle.append(self)
            else:
                self.close()
        elif ex.done:  # answer now; the end of the body (usually in this read) is drained
            self._answered()

    def lost(self, exc: BaseException | None) -> None:
        """The connection ended (the peer closed it, or an error)."""
        self.closed = True
        self.registry.discard(self)
        ex, parser = self.exchange, self.parser
        if ex is None or parser is None:
            return
        now = _perf_ns()
        if parser.eof(now):  # a body delimited by the connection's end
            ex.end_ns = ex.end_ns or now
            self.exchange = None
            self._answered()
            return
        why = f": {exc}" if exc is not None else ""
        if parser.head_seen:
            self.fail("disconnected", f"the server closed the connection mid-answer{why}")
        else:
            self.fail("connection", f"the server closed the connection before answering{why}")


class SocketConnection(Connection):
    """A plain TCP connection read with `recvmsg` from the loop, with kernel time stamps."""

    def __init__(
        self,
        sock: socket.socket,
        buffer: bytearray,
        idle: list[Connection],
        registry: set[Connection],
    ) -> None:
        super().__init__(idle, registry)
        self.sock, self.fd = sock, sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.view = memoryview(buffer)  # shared by the pool's connections: read, then copied
        self.stamps = False
        if KERNEL_STAMPS:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self.stamps = True
            except OSError:
                pass
        self.out = bytearray()  # what the socket did not take yet
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            if self.stamps:
                n, anc, _, _ = self.sock.recvmsg_into((self.view,), 64)
            else:
                n, anc = self.sock.recv_into(self.view), None
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(exc)
            return
        now = _perf_ns()
        if n == 0:
            self._gone(None)
            return
        if anc:
            now = _kernel_time(anc, now)
        self.received(bytes(self.view[:n]), now)

    def _write(self, data: bytes) -> None:
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._gone(exc)
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(exc)
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.fd)

    def _release(self) -> None:
        self.loop.remove_reader(self.fd)
        if self.out:
            self.loop.remove_writer(self.fd)
            self.out.clear()
        self.sock.close()

    def _abort(self) -> None:
        self._release()

    def _gone(self, exc: BaseException | None) -> None:
        if not self.closed:
            self._release()
        self.lost(exc)


def _kernel_time(anc: list[tuple[int, int, bytes]], now: int) -> int:
    """The kernel's receive stamp (wall clock) as perf_counter_ns; `now` if there is none."""
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(raw)
            stamp = sec * 1_000_000_000 + nsec - (_wall_ns() - now)
            return stamp if now - _STALE_NS < stamp < now else now
    return now


class TransportConnection(Connection, asyncio.Protocol):
    """A connection over an asyncio transport (TLS): reads are stamped when delivered."""

    def __init__(self, idle: list[Connection], registry: set[Connection]) -> None:
        super().__init__(idle, registry)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received(data, _perf_ns())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(exc)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

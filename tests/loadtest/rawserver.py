"""A loopback HTTP/1.1 server whose answers are scripts of raw writes, for client tests.

Each path maps to a script `(reply, body) -> keep_alive`; the script writes exactly the bytes
it wants, split and delayed as it wants (blocking sockets, one thread per connection), so a
test controls framing, read boundaries, drops and stalls precisely.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable


class Reply:
    """The write side of one request's answer."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.sent_ns: list[int] = []  # perf_counter_ns after each send()
        # perf_counter_ns just before each send's first byte: recorded before the client can
        # have the data, so a test that has read the reply may read it without a race
        self.start_ns: list[int] = []

    def send(self, data: bytes, pause_s: float = 0.0) -> None:
        if pause_s:
            time.sleep(pause_s)
        self.start_ns.append(time.perf_counter_ns())
        self.conn.sendall(data)
        self.sent_ns.append(time.perf_counter_ns())

    def bytewise(self, data: bytes, pause_s: float = 0.0005) -> None:
        """One byte per write, with a pause between: the client reads them one by one."""
        for i in range(len(data)):
            self.conn.sendall(data[i : i + 1])
            time.sleep(pause_s)

    def reset(self) -> None:
        """Drop the connection abruptly (RST)."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


Script = Callable[[Reply, bytes], bool]


class RawServer:
    """Serves scripted answers on 127.0.0.1 (TLS with `tls=(certfile, keyfile)`)."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.tls: ssl.SSLContext | None = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.routes: dict[str, Script] = {}
        self.connections = 0
        self.bodies: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(1 << 20)
                body, buf = buf[:length], buf[length:]
                self.bodies.append(body)
                if not self.routes[path](Reply(conn), body):
                    return
        except OSError:
            return
        finally:
            conn.close()


# -- building answers -------------------------------------------------------------------------
def event(text: str, finish: str | None = None) -> bytes:
    """A completions stream event carrying `text` (the last one names its `finish` reason;
    a stream whose events name none was cut short, as llama-cpp-python's server does)."""
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}\n\n'
DONE = b"data: [DONE]\n\n"


def head(status: int = 200, sse: bool = True, **headers: str) -> bytes:
    kind = "text/event-stream" if sse else "application/json"
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {kind}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def chunked_stream(pieces: list[bytes]) -> bytes:
    """A complete chunked SSE answer, one chunk per piece."""
    return head(Transfer_Encoding="chunked") + b"".join(chunk(p) for p in pieces) + LAST_CHUNK

"""One HTTP exchange as it arrives: the response head, and a server-sent event stream split
into `data:` payloads stamped with their arrival times (the parser's sink).
"""

from __future__ import annotations


class Exchange:
    """One request and its answer as it arrives (fills itself as the parser's sink).

    A 200 answer with `Content-Type: text/event-stream` is split into `data:` payloads, each
    with the perf_counter_ns time of the read that completed it, up to `[DONE]`; any other body
    is kept whole in `body`. `error` is a transport-level failure: (kind, detail).
    """

    __slots__ = (
        "body", "done", "end_ns", "error", "events", "headers", "sent_ns", "sse", "status",
        "_pending",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sent_ns = 0
        self.end_ns = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.sse = False
        self.events: list[tuple[int, bytes]] = []
        self.done = False  # `data: [DONE]` arrived
        self.body = bytearray()
        self.error: tuple[str, str] | None = None
        self._pending = bytearray()  # an event line not complete yet

    def on_head(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers
        self.sse = status == 200 and "text/event-stream" in headers.get("content-type", "")

    def on_body(self, piece: bytes, now: int) -> None:
        if not self.sse:
            self.body += piece
            return
        if self.done:
            return
        nl = piece.find(b"\n")
        if nl < 0:
            self._pending += piece
            return
        start = 0
        if self._pending:
            self._pending += piece[: nl + 1]
            self._line(bytes(self._pending), 0, len(self._pending) - 1, now)
            self._pending.clear()
            start = nl + 1
        while True:
            nl = piece.find(b"\n", start)
            if nl < 0:
                break
            self._line(piece, start, nl, now)
            start = nl + 1
        if start < len(piece) and not self.done:
            self._pending += piece[start:]

    def _line(self, data: bytes, start: int, end: int, now: int) -> None:
        if self.done or not data.startswith(b"data:", start):
            return
        payload = data[start + 5 : end].strip()
        if payload == b"[DONE]":
            self.done = True
            self.end_ns = now
        else:
            self.events.append((now, payload))

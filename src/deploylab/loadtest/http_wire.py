"""An incremental HTTP/1.1 response parser: bytes in, head and body pieces out.

It keeps no copy of the body: every piece of it is handed to the sink as soon as its framing is
known, whatever size the reads have (one byte or megabytes). It understands what servers send
to a POST: informational `1xx` heads (skipped), bodies sized by `Content-Length`, chunked
bodies (extensions and trailers skipped), and bodies that end when the connection closes.
"""

from __future__ import annotations

from typing import Protocol

MAX_HEAD_BYTES = 64 * 1024
_MAX_SIZE_LINE = 1024

_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _SIZED, _UNTIL_CLOSE, _DONE = range(8)


class ProtocolError(Exception):
    """The bytes are not a valid HTTP/1.1 response."""


class ResponseSink(Protocol):
    """Where a parsed response goes."""

    def on_head(self, status: int, headers: dict[str, str]) -> None: ...

    def on_body(self, piece: bytes, now: int) -> None: ...


def _find(buf: bytearray, sep: bytes, pos: int, limit: int, what: str) -> int:
    """Where `sep` is at or after `pos`; -1 if it has not arrived yet (an error past `limit`)."""
    at = buf.find(sep, pos)
    if at < 0 and len(buf) - pos > limit:
        raise ProtocolError(f"{what} longer than {limit} bytes")
    return at


class ResponseParser:
    """Parses one response at a time; `reset` before each request on a reused connection."""

    __slots__ = ("_buf", "_left", "_state", "keep_alive", "sink")

    def __init__(self, sink: ResponseSink) -> None:
        self.reset(sink)

    def reset(self, sink: ResponseSink) -> None:
        self.sink = sink
        self._buf = bytearray()
        self._state = _HEAD
        self._left = 0  # bytes left in the current chunk or sized body
        self.keep_alive = False  # known once the head is parsed

    @property
    def head_seen(self) -> bool:
        return self._state != _HEAD

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes, now: int) -> bool:
        """Consume bytes read at `now`; True once the response is complete.

        Raises ProtocolError for a malformed response. Bytes after the end of the response
        (the server sent more than one answer) make the connection unfit for reuse.
        """
        state = self._state
        if state == _UNTIL_CLOSE:
            self.sink.on_body(data, now)
            return False
        if state == _SIZED and not self._buf:  # the common case for a sized body: no copy
            return self._sized(data, now)
        if state == _DONE:
            self.keep_alive = False
            return True
        self._buf += data
        return self._advance(now)

    def eof(self, now: int) -> bool:
        """The connection closed: True if that is how this response ends."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            return True
        return self._state == _DONE

    # -- states ---------------------------------------------------------------------------
    def _sized(self, data: bytes, now: int) -> bool:
        take = data[: self._left] if len(data) > self._left else data
        self._left -= len(take)
        if take:
            self.sink.on_body(take, now)
        if self._left == 0:
            self._state = _DONE
            if len(take) < len(data):
                self.keep_alive = False
            return True
        return False

    def _advance(self, now: int) -> bool:
        buf = self._buf
        pos = 0
        while True:
            state = self._state
            if state == _HEAD:
                end = _find(buf, b"\r\n\r\n", pos, MAX_HEAD_BYTES, "response head")
                if end < 0:
                    break
                self._head(bytes(buf[pos:end]))
                pos = end + 4
            elif state == _SIZE:
                eol = _find(buf, b"\r\n", pos, _MAX_SIZE_LINE, "chunk size line")
                if eol < 0:
                    break
                text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
                try:
                    self._left = int(text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {text[:40]!r}") from None
                self._state = _DATA if self._left else _TRAILER
                pos = eol + 2
            elif state == _DATA:
                if pos >= len(buf):
                    break
                take = min(self._left, len(buf) - pos)
                self.sink.on_body(bytes(buf[pos : pos + take]), now)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state == _TRAILER:  # trailer lines up to an empty line
                eol = _find(buf, b"\r\n", pos, MAX_HEAD_BYTES, "chunked trailer line")
                if eol < 0:
                    break
                if eol == pos:
                    self._state = _DONE
                pos = eol + 2
            elif state == _SIZED:
                rest = bytes(buf[pos:])
                del buf[:]
                return self._sized(rest, now) if rest else False
            elif state == _UNTIL_CLOSE:
                if pos < len(buf):
                    self.sink.on_body(bytes(buf[pos:]), now)
                del buf[:]
                return False
            else:  # _DONE
                if pos < len(buf):
                    self.keep_alive = False
                del buf[:]
                return True
        del buf[:pos]
        return False

    def _head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:  # 100 Continue and friends: the real head follows
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        conn = headers.get("connection", "").lower()
        self.keep_alive = "close" not in conn if parts[0] == "HTTP/1.1" else "keep-alive" in conn
        coding = headers.get("transfer-encoding", "").lower()
        if status in (204, 304):
            self._state = _DONE
        elif coding:
            if coding.rsplit(",", 1)[-1].strip() == "chunked":
                self._state = _SIZE
            else:
                self._state, self.keep_alive = _UNTIL_CLOSE, False
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
            if self._left < 0:
                raise ProtocolError("bad Content-Length")
            self._state = _SIZED if self._left else _DONE
        else:
            self._state, self.keep_alive = _UNTIL_CLOSE, False
        self.sink.on_head(status, headers)

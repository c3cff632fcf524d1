"""The incremental HTTP/1.1 response parser, fed the same answer in every possible split."""

from __future__ import annotations

import pytest

from deploylab.loadtest.http_wire import ProtocolError, ResponseParser


class Collect:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def on_head(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    def on_body(self, piece: bytes, now: int) -> None:
        self.body += piece


def parse(*reads: bytes) -> tuple[Collect, ResponseParser, bool]:
    sink = Collect()
    parser = ResponseParser(sink)
    done = False
    for data in reads:
        done = parser.feed(data, 0)
    return sink, parser, done


CHUNKED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
)


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_chunked_answer_split_anywhere(cut: int) -> None:
    sink, parser, done = parse(CHUNKED[:cut], CHUNKED[cut:])
    assert done and parser.keep_alive
    assert (sink.status, sink.headers["x-a"], sink.body) == (200, "1, 2", b"hello world")


def test_sized_answer_and_what_follows_it() -> None:
    answer = b"HTTP/1.1 429 Too Many\r\nContent-Length: 4\r\n\r\nbusy"
    sink, parser, done = parse(answer)
    assert done and parser.keep_alive and (sink.status, sink.body) == (429, b"busy")
    _, parser, done = parse(answer + b"HTTP/1.1 200")  # more than one answer: not reusable
    assert done and not parser.keep_alive


def test_no_body_and_close_delimited_bodies() -> None:
    _, parser, done = parse(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert done
    sink, parser, done = parse(b"HTTP/1.0 200 OK\r\n\r\nab", b"cd")
    assert not done and not parser.keep_alive and sink.body == b"abcd"
    assert parser.eof(0)


@pytest.mark.parametrize(
    "answer",
    [b"HTTX/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"],
)
def test_malformed_answers(answer: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(answer)

"""The load generator's own HTTP client against a real loopback server with scripted answers:
framing, read boundaries, errors by kind, keep-alive, big bodies, TLS, and arrival times."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from rawserver import (
    DONE,
    LAST_CHUNK,
    USAGE,
    RawServer,
    Reply,
    chunk,
    chunked_stream,
    event,
    head,
)

from deploylab.loadtest import http_conn
from deploylab.loadtest.client import RawRecord, send_streaming
from deploylab.loadtest.http_client import ConnectionPool, Endpoint


@pytest.fixture(scope="module")
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    p = ConnectionPool()
    yield p
    p.close()


async def fetch(
    pool: ConnectionPool, url: str, body: bytes = b"{}", timeout_s: float = 5.0
) -> RawRecord:
    rec = RawRecord(0, 1, 0, "m", None, {}, 1, 3, scheduled_ns=time.perf_counter_ns())
    await send_streaming(pool, Endpoint.from_url(url), body, rec, timeout_s)
    return rec


def route(server: RawServer, path: str, answer: bytes, keep: bool = True) -> str:
    """Serve a fixed answer at `path`; return its URL."""

    def script(reply: Reply, body: bytes) -> bool:
        reply.send(answer)
        return keep

    server.routes[path] = script
    return server.url + path


def assert_ok(rec: RawRecord, text: str, chunks: int) -> None:
    assert rec.error_kind is None, rec.error_detail
    assert rec.status == 200
    assert rec.text == text
    assert len(rec.chunk_ns) == chunks
    assert rec.sent_ns <= rec.chunk_ns[0] <= rec.chunk_ns[-1] <= rec.end_ns


STREAM = [event(" a"), event(" b"), event(" c", finish="length"), USAGE, DONE]


async def test_chunked_stream(server: RawServer, pool: ConnectionPool) -> None:
    rec = await fetch(pool, route(server, "/chunked", chunked_stream(STREAM)))
    assert_ok(rec, " a b c", 3)
    assert (rec.prompt_tokens, rec.completion_tokens) == (5, 3)


async def test_sized_stream_and_sized_json_answer(server: RawServer, pool: ConnectionPool) -> None:
    sse = b"".join(STREAM)
    rec = await fetch(pool, route(server, "/sized", head(Content_Length=str(len(sse))) + sse))
    assert_ok(rec, " a b c", 3)
    answer = json.dumps({"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]})
    answer = answer.encode()
    url = route(server, "/json", head(sse=False, Content_Length=str(len(answer))) + answer)
    assert_ok(await fetch(pool, url), "whole", 1)


async def test_done_without_a_finish_reason_is_truncated(
    server: RawServer, pool: ConnectionPool
) -> None:
    """llama-cpp-python cuts a stream with [DONE] when another request waits: not a success."""
    cut = await fetch(pool, route(server, "/cut", chunked_stream([event(" a"), USAGE, DONE])))
    assert cut.error_kind == "truncated" and cut.text == " a" and len(cut.chunk_ns) == 1
    assert cut.finish_reasons == {}
    # the finish reason in an event of its own, with no text, is a finished answer
    finish = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}\n\n'
    whole = await fetch(pool, route(server, "/fin", chunked_stream([event(" a"), finish, DONE])))
    assert_ok(whole, " a", 1)
    assert whole.finish_reasons == {0: "length"}


async def test_body_ended_by_close(server: RawServer, pool: ConnectionPool) -> None:
    url = route(server, "/close", head() + b"".join(STREAM), keep=False)
    assert_ok(await fetch(pool, url), " a b c", 3)


async def test_one_byte_reads(server: RawServer, pool: ConnectionPool) -> None:
    answer = chunked_stream(STREAM)

    def script(reply: Reply, body: bytes) -> bool:
        reply.bytewise(answer)
        return True

    server.routes["/bytes"] = script
    rec = await fetch(pool, server.url + "/bytes")
    assert_ok(rec, " a b c", 3)


async def test_event_split_across_reads_is_timed_by_its_last_byte(
    server: RawServer, pool: ConnectionPool
) -> None:
    second = event(" b", finish="stop")
    replies: list[Reply] = []

    def script(reply: Reply, body: bytes) -> bool:
        replies.append(reply)
        reply.send(head(Transfer_Encoding="chunked") + chunk(event(" a")))
        reply.send(chunk(second[:9]), pause_s=0.03)  # "data: {"c" arrives 30 ms later ...
        reply.send(chunk(second[9:] + DONE) + LAST_CHUNK, pause_s=0.08)  # ... the rest 80 ms on
        return True

    server.routes["/split"] = script
    rec = await fetch(pool, server.url + "/split")
    assert_ok(rec, " a b", 2)
    # The event is stamped when its last byte came, not its first (sent 80 ms or more
    # before). `start_ns`, not `sent_ns`: the client can finish reading before the server
    # thread has stamped its last send (an IndexError on a loaded CI machine).
    start = replies[0].start_ns
    assert rec.chunk_ns[1] >= start[2] - 1_000_000 and start[2] - start[1] >= 80_000_000


@pytest.mark.parametrize("chunked", [False, True])
async def test_error_status_with_its_body(
    server: RawServer, pool: ConnectionPool, chunked: bool
) -> None:
    body = b'{"error": {"message": "overloaded, retry later"}}'
    if chunked:
        answer = head(503, sse=False, Transfer_Encoding="chunked") + chunk(body) + LAST_CHUNK
    else:
        answer = head(503, sse=False, Content_Length=str(len(body))) + body
    rec = await fetch(pool, route(server, f"/err{chunked}", answer))
    assert (rec.status, rec.error_kind) == (503, "http_503")
    assert rec.error_detail is not None and "overloaded, retry later" in rec.error_detail
    assert rec.chunk_ns == []


async def test_connection_dropped_mid_stream_and_before_the_answer(
    server: RawServer, pool: ConnectionPool
) -> None:
    def mid(reply: Reply, body: bytes) -> bool:
        reply.send(head(Transfer_Encoding="chunked") + chunk(event(" a")) + chunk(event(" b")))
        time.sleep(0.02)
        reply.reset()
        return False

    def before(reply: Reply, body: bytes) -> bool:
        return False  # closes without a byte

    server.routes["/drop"], server.routes["/nothing"] = mid, before
    rec = await fetch(pool, server.url + "/drop")
    assert rec.error_kind == "disconnected" and len(rec.chunk_ns) == 2
    rec = await fetch(pool, server.url + "/nothing")
    assert rec.error_kind == "connection" and rec.status is None


async def test_stream_complete_without_done_is_disconnected(
    server: RawServer, pool: ConnectionPool
) -> None:
    rec = await fetch(pool, route(server, "/nodone", chunked_stream([event(" a")])))
    assert rec.error_kind == "disconnected" and len(rec.chunk_ns) == 1


async def test_stall_past_the_timeout(server: RawServer, pool: ConnectionPool) -> None:
    def script(reply: Reply, body: bytes) -> bool:
        reply.send(head(Transfer_Encoding="chunked") + chunk(event(" a")))
        time.sleep(1.0)
        return False

    server.routes["/stall"] = script
    start = time.perf_counter()
    rec = await fetch(pool, server.url + "/stall", timeout_s=0.3)
    # a timeout, not the server's close after 1 s (that would be `disconnected`), and never
    # before the 0.3 s asked for
    assert rec.error_kind == "timeout" and len(rec.chunk_ns) == 1
    assert time.perf_counter() - start >= 0.29 and rec.end_ns - rec.sent_ns >= 0.29e9


async def test_refused_connection(pool: ConnectionPool) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    rec = await fetch(pool, f"http://127.0.0.1:{port}/v1/completions")
    assert rec.error_kind == "connection" and rec.status is None


async def test_malformed_answer_is_a_bad_response(server: RawServer, pool: ConnectionPool) -> None:
    answer = head(Transfer_Encoding="chunked") + b"zz\r\n" + DONE
    rec = await fetch(pool, route(server, "/garbled", answer))
    assert rec.error_kind == "bad_response"


async def test_keep_alive_reuses_one_connection(pool: ConnectionPool) -> None:
    srv = RawServer()
    try:
        url = route(srv, "/ka", chunked_stream(STREAM))
        for _ in range(5):
            assert_ok(await fetch(pool, url), " a b c", 3)
        assert (srv.connections, pool.opened) == (1, 1)
        # an answer that says `Connection: close` is not reused
        closing = head(Transfer_Encoding="chunked", Connection="close")
        url = route(srv, "/once", closing + chunk(b"".join(STREAM)) + LAST_CHUNK, keep=False)
        for _ in range(2):
            assert_ok(await fetch(pool, url), " a b c", 3)
        assert srv.connections == pool.opened == 2  # the first reused, then closed
        assert_ok(await fetch(pool, srv.url + "/ka"), " a b c", 3)
        assert srv.connections == pool.opened == 3
    finally:
        srv.close()


async def test_megabyte_bodies_both_ways(server: RawServer, pool: ConnectionPool) -> None:
    big_text = "x" * (1 << 20)  # one event line of 1 MB, sent in 64 KB chunks
    line = event(big_text)
    pieces = [line[i : i + 65536] for i in range(0, len(line), 65536)]
    many = [event(f" t{i}") for i in range(19999)] + [event(" t19999", finish="length")]

    def script(reply: Reply, body: bytes) -> bool:
        answer = head(Transfer_Encoding="chunked") + b"".join(chunk(p) for p in pieces)
        answer += chunk(b"".join(many)) + chunk(DONE) + LAST_CHUNK
        reply.send(answer)
        return True

    server.routes["/big"] = script
    prompt = json.dumps({"prompt": "y" * (1 << 20)}).encode()
    rec = await fetch(pool, server.url + "/big", body=prompt)
    assert rec.error_kind is None
    assert server.bodies[-1] == prompt
    assert len(rec.chunk_ns) == 20001
    assert rec.text == big_text + "".join(f" t{i}" for i in range(20000))


@pytest.mark.skipif(not http_conn.KERNEL_STAMPS, reason="kernel receive stamps are Linux-only")
async def test_arrival_is_stamped_by_the_kernel_not_when_the_loop_gets_to_it(
    server: RawServer, pool: ConnectionPool
) -> None:
    replies: list[Reply] = []

    def script(reply: Reply, body: bytes) -> bool:
        replies.append(reply)
        reply.send(head(Transfer_Encoding="chunked"))
        reply.send(chunk(event(" a") + DONE) + LAST_CHUNK, pause_s=0.02)
        return True

    server.routes["/busy"] = script
    url = server.url + "/busy"
    await fetch(pool, url)  # connect first
    job = asyncio.ensure_future(fetch(pool, url))
    await asyncio.sleep(0.005)  # the request is out
    time.sleep(0.2)  # the loop is busy while the token arrives
    busy_until = time.perf_counter_ns()
    rec = await job
    token_sent = replies[-1].start_ns[-1]
    # stamped when the kernel got it (after the server sent it), not when the loop got to it
    assert rec.chunk_ns[0] >= token_sent - 1_000_000  # kernel stamps: another clock's offset
    if token_sent < busy_until - 2_000_000:  # it did arrive while the loop was busy
        assert rec.chunk_ns[0] < busy_until


async def test_https_target(
    tmp_path: Path, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted by the default context
    srv = RawServer(tls=(str(cert), str(key)))
    try:
        url = route(srv, "/tls", chunked_stream(STREAM))
        for _ in range(2):
            assert_ok(await fetch(pool, url), " a b c", 3)
        assert srv.connections == 1
    finally:
        srv.close()

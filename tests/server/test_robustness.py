"""Disconnects, many concurrent clients, admission control and the shutdown timeout on a real
`deploylab serve` with the real model."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import openai
import psutil

from .test_errors_metrics import metrics

MODEL = "smollm2-135m-instruct"
COMP = "/v1/completions"


def wait_for(url: str, cond: Any, timeout: float = 60) -> dict[str, float]:
    """Poll /metrics until `cond(m)` holds (or the deadline passes); the last scrape."""
    deadline = time.monotonic() + timeout
    m = metrics(url)
    while not cond(m) and time.monotonic() < deadline:
        time.sleep(0.1)
        m = metrics(url)
    return m


def idle(m: dict[str, float]) -> bool:
    return m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0


def test_non_streaming_request_is_aborted_when_the_client_goes(server: Any) -> None:
    base = wait_for(server.url, idle)["vllm:kv_cache_usage_perc"]
    body = json.dumps({"model": MODEL, "prompt": "Write an essay:", "max_tokens": 8000,
                       "ignore_eos": True}).encode()  # fmt: skip
    u = urlparse(server.url)
    sock = socket.create_connection((u.hostname, u.port))
    head = (f"POST {COMP} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    sock.sendall(head + body)
    running = wait_for(server.url, lambda m: m["vllm:generation_tokens_total"] > 0
                       and m["vllm:num_requests_running"] == 1)  # fmt: skip
    assert running["vllm:num_requests_running"] == 1
    assert running["vllm:kv_cache_usage_perc"] > base
    sock.close()  # the client gives up without reading the answer
    after = wait_for(server.url, lambda m: idle(m) and m["vllm:kv_cache_usage_perc"] <= base)
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:kv_cache_usage_perc"] <= base
    # 8000 tokens were asked for: far fewer were made before the abort
    made = after["vllm:generation_tokens_total"] - running["vllm:generation_tokens_total"]
    assert made < 4000


async def _swarm(url: str) -> tuple[list[Any], list[int], list[str]]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)

    async def full(i: int) -> Any:
        stream = await client.completions.create(
            model=MODEL, prompt=f"Story number {i}:", max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        finish, usage = None, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            usage = chunk.usage or usage
        return finish, usage.completion_tokens if usage else None

    async def quitter(i: int) -> int:
        stream = await client.completions.create(
            model=MODEL, prompt=f"Essay {i}:", max_tokens=4000, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()  # disconnect mid-stream
        return seen

    async def abandoned(i: int) -> str:
        try:
            await client.with_options(timeout=4.0).completions.create(
                model=MODEL, prompt=f"Book {i}:", max_tokens=4000, extra_body={"ignore_eos": True}
            )
        except openai.APITimeoutError:
            return "abandoned"
        return "answered"

    jobs = [full(i) for i in range(48)] + [quitter(i) for i in range(16)]
    jobs += [abandoned(i) for i in range(4)]
    out = await asyncio.gather(*jobs)
    await client.close()
    return list(out[:48]), list(out[48:64]), list(out[64:])


def test_64_streams_16_disconnects_4_abandoned_leave_the_engine_idle(server: Any) -> None:
    base = wait_for(server.url, idle)["vllm:kv_cache_usage_perc"]
    fulls, quitters, abandoned = asyncio.run(_swarm(server.url))
    assert all(f == ("length", 8) for f in fulls), fulls
    assert quitters == [3] * 16
    assert abandoned == ["abandoned"] * 4
    after = wait_for(server.url, lambda m: idle(m) and m["vllm:kv_cache_usage_perc"] <= base)
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:num_requests_waiting"] == 0
    assert after["vllm:kv_cache_usage_perc"] <= base


class LongStream(threading.Thread):
    """A streaming request that runs until the server ends it; records what came back."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.status = 0
        self.lines: list[str] = []
        self.body = b""

    def run(self) -> None:
        body = {"model": MODEL, "prompt": "Count to a million:", "max_tokens": 8000,
                "ignore_eos": True, "stream": True}  # fmt: skip
        with httpx.stream("POST", self.url + COMP, json=body, timeout=300) as r:
            self.status = r.status_code
            if r.status_code == 200:
                self.lines = [line for line in r.iter_lines() if line]
            else:
                self.body = r.read()


def test_admission_control_then_shutdown_timeout(server_factory: Any) -> None:
    srv = server_factory(
        "--max-num-seqs", "1", "--max-waiting", "2", "--shutdown-timeout", "3"
    )  # fmt: skip
    longs = [LongStream(srv.url) for _ in range(3)]
    longs[0].start()  # running first, so the next two are the waiting ones
    wait_for(srv.url, lambda m: m["vllm:num_requests_running"] == 1)
    for t in longs[1:]:
        t.start()
    full = wait_for(srv.url, lambda m: m["vllm:num_requests_running"] == 1
                    and m["vllm:num_requests_waiting"] == 2)  # fmt: skip
    assert (full["vllm:num_requests_running"], full["vllm:num_requests_waiting"]) == (1, 2)
    proc = psutil.Process(srv.proc.pid)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}

    def flood(n: int) -> list[httpx.Response]:
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: client.post(srv.url + COMP, json=body), range(n)))

    first = flood(100)
    rss_first = proc.memory_info().rss
    second = flood(200)
    rss_second = proc.memory_info().rss
    for r in first + second:
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "RateLimitError"
    # the 429s did not wait for the queue: the same requests still run and wait
    still = metrics(srv.url)
    assert (still["vllm:num_requests_running"], still["vllm:num_requests_waiting"]) == (1, 2)
    assert all(t.is_alive() for t in longs)
    # memory does not grow with the number of rejected requests (twice as many the 2nd time)
    assert rss_second - rss_first < 64 * 2**20, (rss_first, rss_second)

    srv.proc.send_signal(signal.SIGTERM)
    for t in longs:
        t.join(120)
    assert srv.proc.wait(120) == 0
    streamed = [t for t in longs if t.status == 200]
    refused = [t for t in longs if t.status != 200]
    assert len(streamed) >= 1
    for t in streamed:  # cut by the shutdown timeout: a last error event, then [DONE]
        assert t.lines[-1] == "data: [DONE]"
        err = json.loads(t.lines[-2][len("data: ") :])["error"]
        assert err["code"] == 503 and "shut down" in err["message"]
        assert any('"text"' in line for line in t.lines[:-2]), t.lines[:5]
    for t in refused:  # still waiting, so no 200 yet: a 503 body
        assert t.status == 503 and json.loads(t.body)["error"]["code"] == 503

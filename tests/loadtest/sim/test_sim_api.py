"""OpenAI compatibility of the simulator: official client, error responses, metrics, HTTP/1.1."""

from __future__ import annotations

import json
import socket

import aiohttp
import openai
from simhelpers import ids, run_sim, send

FAST = "ttft: {base_ms: 2}\nitl: {base_ms: 1}\noutput: {distribution: fixed, mean: 7}\n"


async def test_official_openai_client_streams_with_usage() -> None:
    with run_sim(FAST) as sim:
        client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="none")
        models = await client.models.list()
        stream = await client.completions.create(
            model="sim-model",
            prompt="Count to ten please",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = [c async for c in stream]
        chat = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "Hello there"}]
        )
        chat_stream = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chat_chunks = [c async for c in chat_stream]
        await client.close()
    assert [m.id for m in models.data] == ["sim-model"]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == " the of and to"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == 4  # Count, to, ten, please
    assert chunks[-2].choices[0].finish_reason == "length"
    # Without max_tokens and ignore_eos, the output length comes from the distribution.
    assert chat.usage is not None and chat.usage.completion_tokens == 7
    assert chat.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.role == "assistant"
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chat_chunks).count(" ") == 7


async def test_bad_requests_get_openai_errors() -> None:
    yaml = FAST + "engine: {max_model_len: 100, kv_capacity_tokens: 1000}\n"
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            unknown = await send(s, sim.url, {"model": "gpt-9", "prompt": "hi"})
            too_long = await send(s, sim.url, {"prompt": ids(90), "max_tokens": 20})
            n2 = await send(s, sim.url, {"prompt": "hi", "n": 2})
            no_msgs = await send(s, sim.url, {"messages": []}, "/v1/chat/completions")
            async with s.post(sim.url + "/v1/completions", data=b"{nope") as resp:
                bad_json = resp.status, await resp.json()
            async with s.get(sim.url + "/v1/completions") as resp:
                wrong_method = resp.status
            async with s.get(sim.url + "/nowhere") as resp:
                no_route = resp.status
    assert unknown.status == 404 and "gpt-9" in unknown.body["error"]["message"]
    assert (
        too_long.status == 400
        and "maximum context length is 100" in too_long.body["error"]["message"]
    )
    assert n2.status == 400 and n2.body["error"]["param"] == "n"
    assert no_msgs.status == 400
    assert bad_json[0] == 400 and "not valid JSON" in bad_json[1]["error"]["message"]
    assert (wrong_method, no_route) == (405, 404)


async def test_metrics_use_vllm_names() -> None:
    with run_sim(FAST) as sim:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                await send(s, sim.url, {"prompt": ids(20), "max_tokens": 5, "stream": True})
            async with s.get(sim.url + "/metrics") as resp:
                text = await resp.text()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_hits_total",
        "vllm:request_success_total",
    ):
        assert name in text
    assert 'vllm:time_to_first_token_seconds_count{model_name="sim-model"} 3.0' in text
    assert 'vllm:inter_token_latency_seconds_count{model_name="sim-model"} 12.0' in text
    assert 'vllm:generation_tokens_total{model_name="sim-model"} 15.0' in text
    assert 'vllm:prompt_tokens_total{model_name="sim-model"} 60.0' in text


def _raw(port: int, payload: bytes, until: bytes, count: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(until) < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_http_pipelining_chunked_bodies_and_expect_continue() -> None:
    body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
    plain = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )
    chunked = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    )
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with run_sim(FAST) as sim:
        port = sim.server.port
        # Three pipelined requests on one connection, answered in order.
        data = _raw(port, plain + chunked + health, b"HTTP/1.1 200 OK", 3)
        assert data.count(b"HTTP/1.1 200 OK") == 3
        assert data.index(b'"text_completion"') < data.rindex(b"Content-Length: 0")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                plain.split(b"\r\n\r\n")[0].replace(b"Host: x", b"Host: x\r\nExpect: 100-continue")
                + b"\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


async def test_continuous_usage_stats_put_usage_in_every_event() -> None:
    body = {
        "prompt": ids(12),
        "max_tokens": 3,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with run_sim(FAST) as sim:
        async with aiohttp.ClientSession() as s:
            result = await send(s, sim.url, body)
    events = [json.loads(e) for e in result.events[:-1]]
    assert [e["usage"]["completion_tokens"] for e in events] == [1, 2, 3, 3]
    assert all(e["usage"]["prompt_tokens"] == 12 for e in events)
    assert events[2]["choices"][0]["finish_reason"] == "length" and events[3]["choices"] == []

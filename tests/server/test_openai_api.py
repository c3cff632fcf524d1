"""The server through the official `openai` client, with the real model."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

MODEL = "smollm2-135m-instruct"
ServerProc = Any

QUESTION = "What is the capital of France?"


def client(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_chat_non_streaming_answers_paris(server: ServerProc) -> None:
    resp = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=20,
        temperature=0,
    )
    choice = resp.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_content_parts_equal_plain_string(server: ServerProc) -> None:
    c = client(server)
    plain = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
    )
    parts = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        max_tokens=12,
        temperature=0,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_chat_streaming_with_usage(server: ServerProc) -> None:
    stream = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            text.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "Paris" in "".join(text)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_completions_length_and_streaming(server: ServerProc) -> None:
    c = client(server)
    resp = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    pieces = [
        ch.choices[0].text
        for ch in c.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        if ch.choices
    ]
    assert "".join(pieces) == resp.choices[0].text


def test_server_greedy_equals_offline_llm(server: ServerProc) -> None:
    from tests.smol import smol_model, smol_tokenizer

    from deploylab.engine import LLM, EngineConfig, LLMEngine, SamplingParams

    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    # The shared server's exact float path around the weights parsed once (tests/smol.py)
    # rather than a second parse of the GGUF; a smaller KV cache holds these prompts.
    # (on one torch thread, conftest.py; greedy tokens do not depend on the thread count)
    config = EngineConfig(model=MODEL, kv_cache_gib=0.25)
    llm = LLM(llm_engine=LLMEngine(config, model=smol_model(), tokenizer=smol_tokenizer()))
    offline = llm.generate(prompts, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    c = client(server)
    for prompt, out in zip(prompts, offline, strict=True):
        resp = c.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=24,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert resp.choices[0].text == out.text


def test_logprobs_chat_and_completion(server: ServerProc) -> None:
    c = client(server)
    chat = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) == chat.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    # greedy: the chosen token is the most likely alternative
    assert all(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4 for t in content)
    comp = c.completions.create(model=MODEL, prompt="Hello", max_tokens=3, logprobs=2)
    lp = comp.choices[0].logprobs
    assert lp is not None and len(lp.token_logprobs or []) == 3


def test_seed_reproducible_and_stop(server: ServerProc) -> None:
    c = client(server)
    kwargs = dict(model=MODEL, prompt="List of fruits:", max_tokens=16, temperature=1.0, seed=7)
    a = c.completions.create(**kwargs)  # type: ignore[call-overload]
    b = c.completions.create(**kwargs)  # type: ignore[call-overload]
    assert a.choices[0].text == b.choices[0].text
    stopped = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=20,
        temperature=0,
        stop=["France"],
    )
    text = stopped.choices[0].message.content or ""
    assert "France" not in text and stopped.choices[0].finish_reason == "stop"


def test_models_and_health(server: ServerProc) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.saw_loading  # type: ignore[attr-defined]  # 503 while the model loaded


def test_vllm_extras_ignore_eos_min_tokens(server: ServerProc) -> None:
    c = client(server)
    resp = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=40,
        temperature=0,
        extra_body={"ignore_eos": True, "min_tokens": 40, "top_k": 5, "repetition_penalty": 1.1},
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 40
    assert resp.choices[0].finish_reason == "length"


async def test_32_concurrent_streams_complete_with_usage(server: ServerProc) -> None:
    aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)

    async def one(i: int) -> tuple[int, int]:
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=10 + i % 7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks, usage = 0, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
        assert usage is not None
        return usage.completion_tokens, 10 + i % 7

    results = await asyncio.gather(*(one(i) for i in range(32)))
    for got, want in results:
        assert got == want
    await aclient.close()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_http_content_type_sse(server: ServerProc, path: str) -> None:
    body = (
        {"prompt": "Hi", "max_tokens": 2, "stream": True}
        if "chat" not in path
        else {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True}
    )
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)

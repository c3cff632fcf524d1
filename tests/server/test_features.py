"""`n` samples, batched prompts, echo with prompt logprobs, structured output and tool
calling, through the official `openai` client against the real server and model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

MODEL = "smollm2-135m-instruct"
PROMPTS = ["Once upon a time", "The capital of France is"]


def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def sampled(**kw: Any) -> dict[str, Any]:
    return dict(model=MODEL, max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True}) | kw


def test_batched_prompts_with_n_index_order_and_usage(server: Any) -> None:
    c = client(server)
    resp = c.completions.create(prompt=PROMPTS, n=3, seed=5, **sampled())
    assert [ch.index for ch in resp.choices] == list(range(6))
    # Choice i * n + k is sample k of prompt i: what a single request seeded seed + k gives.
    singles = []
    prompt_tokens = 0
    for prompt in PROMPTS:
        for k in range(3):
            one = c.completions.create(prompt=prompt, seed=5 + k, **sampled())
            singles.append(one.choices[0].text)
        prompt_tokens += one.usage.prompt_tokens  # type: ignore[union-attr]
    assert [ch.text for ch in resp.choices] == singles
    assert len(set(singles[:3])) > 1  # the samples of one prompt differ
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == prompt_tokens  # each prompt counted once, not n times
    assert resp.usage.completion_tokens == 6 * 6
    # The same request streamed: each choice's pieces, joined, give the same text.
    pieces: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in c.completions.create(
        prompt=PROMPTS,
        n=3,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
        **sampled(),
    ):
        usage = chunk.usage or usage
        for ch in chunk.choices:
            pieces[ch.index] = pieces.get(ch.index, "") + ch.text
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert [pieces[i] for i in range(6)] == singles
    assert finishes == {i: "length" for i in range(6)}
    assert usage is not None and usage.model_dump() == resp.usage.model_dump()


def test_batched_token_id_prompts(server: Any) -> None:
    c = client(server)
    ids = [[504, 3575, 282, 4649, 314], [1780, 2119, 253, 655]]
    batch = c.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    for i, prompt in enumerate(ids):
        one = c.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
        assert batch.choices[i].text == one.choices[0].text
    assert batch.usage is not None and batch.usage.prompt_tokens == 9


def test_chat_n_samples_streaming_and_greedy(server: Any) -> None:
    c = client(server)
    messages = [{"role": "user", "content": "Name a fruit."}]
    resp = c.chat.completions.create(messages=messages, n=3, seed=1, **sampled(max_tokens=8))
    assert [ch.index for ch in resp.choices] == [0, 1, 2]
    texts = [ch.message.content for ch in resp.choices]
    assert resp.usage is not None and resp.usage.completion_tokens == 24
    roles: set[int] = set()
    pieces = {0: "", 1: "", 2: ""}
    for chunk in c.chat.completions.create(
        messages=messages, n=3, seed=1, stream=True, **sampled(max_tokens=8)
    ):
        for ch in chunk.choices:
            if ch.delta.role:
                roles.add(ch.index)
            pieces[ch.index] += ch.delta.content or ""
    assert roles == {0, 1, 2}
    assert [pieces[i] for i in range(3)] == texts
    greedy = c.chat.completions.create(
        model=MODEL, messages=messages, n=2, max_tokens=8, temperature=0
    )
    one = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert [ch.message.content for ch in greedy.choices] == [one.choices[0].message.content] * 2


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_returns_prompt_logprobs_and_offsets(server: Any, max_tokens: int) -> None:
    c = client(server)
    prompt = "The capital of France is Paris"
    resp = c.completions.create(
        model=MODEL,
        prompt=[prompt, prompt],
        echo=True,
        logprobs=2,
        max_tokens=max_tokens,
        temperature=0,
    )
    assert len(resp.choices) == 2
    n_prompt = resp.usage.prompt_tokens // 2  # type: ignore[union-attr]
    for ch in resp.choices:
        lp = ch.logprobs
        assert lp is not None and ch.text.startswith(prompt)
        assert len(lp.tokens or []) == n_prompt + max_tokens
        assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
        assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
        assert lp.top_logprobs is not None and lp.top_logprobs[0] is None
        assert all(len(t) <= 2 for t in lp.top_logprobs[1:])  # type: ignore[arg-type]
        tokens = lp.tokens or []
        assert "".join(tokens[:n_prompt]) == prompt
        assert lp.text_offset == [len("".join(tokens[:i])) for i in range(len(tokens))]
    # " Paris" after "The capital of France is" is the model's best guess.
    last = resp.choices[0].logprobs.top_logprobs[n_prompt - 1]  # type: ignore[union-attr,index]
    assert max(last, key=last.get) == " Paris"  # type: ignore[arg-type]


def test_echo_streaming_sends_the_prompt_first(server: Any) -> None:
    chunks = list(
        client(server).completions.create(
            model=MODEL, prompt="Hello world", echo=True, max_tokens=3, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].text.startswith("Hello world")


def test_max_tokens_zero_without_echo_is_400(server: Any) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 0}, timeout=60
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "is_capital"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


def test_json_schema_and_json_object(server: Any) -> None:
    c = client(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    resp = c.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        n=2,
        seed=3,
        temperature=1.0,
        max_tokens=40,
        response_format=fmt,  # type: ignore[arg-type]
    )
    for ch in resp.choices:
        assert ch.finish_reason == "stop"
        value = json.loads(ch.message.content or "")
        assert set(value) == {"city", "is_capital"} and value["city"] in ("Paris", "London", "Rome")
    text = "".join(
        ch.delta.content or ""
        for chunk in c.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=40,
            stream=True,
            response_format=fmt,  # type: ignore[arg-type]
        )
        for ch in chunk.choices
    )
    assert json.loads(text)["city"] in ("Paris", "London", "Rome")
    free = c.completions.create(
        model=MODEL,
        prompt="A JSON object describing a cat:",
        max_tokens=80,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    if free.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(free.choices[0].text), dict)
    else:  # cut at max_tokens: still a JSON object's prefix
        assert free.choices[0].text.startswith("{")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a timezone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                "required": ["zone"],
            },
        },
    },
]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check_call(call: Any) -> None:
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert args["city"] in ("Paris", "London")
    else:
        assert call.function.name == "get_time" and args["zone"] in ("UTC", "CET")
    assert call.id.startswith("call_") and call.type == "function"


def test_tool_choice_required_named_auto_none(server: Any) -> None:
    c = client(server)
    kw: dict[str, Any] = dict(
        model=MODEL, messages=WEATHER, tools=TOOLS, temperature=0, max_tokens=60
    )
    req = c.chat.completions.create(tool_choice="required", **kw)
    msg = req.choices[0].message
    assert req.choices[0].finish_reason == "tool_calls" and msg.tool_calls and msg.content is None
    for call in msg.tool_calls:
        _check_call(call)
    named = c.chat.completions.create(
        tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw
    )
    calls = named.choices[0].message.tool_calls
    assert calls and len(calls) == 1 and calls[0].function.name == "get_time"
    _check_call(calls[0])
    auto = c.chat.completions.create(tool_choice="auto", **kw).choices[0]
    if auto.message.tool_calls:  # the model chose to call: the calls are well formed
        assert auto.finish_reason == "tool_calls"
        for call in auto.message.tool_calls:
            _check_call(call)
    else:
        assert auto.message.content and not auto.message.content.startswith("<tool_call>")
    none = c.chat.completions.create(tool_choice="none", **kw).choices[0]
    assert none.message.tool_calls is None and none.message.content
    # Streaming: the SDK's accumulated tool call equals the non-streaming one's content.
    args = ""
    names = []
    for chunk in c.chat.completions.create(tool_choice="required", stream=True, **kw):
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                if tc.index == 0 and tc.function and tc.function.arguments:
                    args += tc.function.arguments
    assert names == [call.function.name for call in msg.tool_calls]
    assert json.loads(args) == json.loads(msg.tool_calls[0].function.arguments)
    # A conversation that carries the call and its result goes on as text.
    follow = c.chat.completions.create(
        model=MODEL,
        messages=[
            *WEATHER,
            {"role": "assistant", "content": None, "tool_calls": [msg.tool_calls[0].model_dump()]},
            {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "Sunny, 21 C"},
        ],
        tools=TOOLS,
        tool_choice="none",
        max_tokens=20,
        temperature=0,
    )
    assert follow.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nope"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "json_object"}, "min_tokens": 3}, "min_tokens"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
    ],
)
def test_unsupported_requests_are_400(server: Any, body: dict[str, Any], param: str) -> None:
    payload = {"messages": WEATHER, "max_tokens": 4} | body
    r = httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param)


def test_empty_prompt_batch_is_400(server: Any) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": [], "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"

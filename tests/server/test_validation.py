"""Strict validation on a real server: every value that could fail inside the engine, absurd
numbers, lax JSON types, lone surrogates and deep JSON get an OpenAI-style 400 naming the
field; unknown routes and methods get OpenAI-style 404/405; /openapi.json has the schemas."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]


def comp(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MSG, "max_tokens": 2, **fields}


DEEP = b'{"model": "x", "prompt": "hi", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"

CASES = [
    # (path, body (dict or raw bytes), param substring, message substring)
    (COMP, comp(seed=2**64), "seed", "9223372036854775807"),
    (COMP, comp(seed=-(2**63) - 1), "seed", "-9223372036854775808"),
    (COMP, comp(stop_token_ids=[49152], min_tokens=1), "stop_token_ids", "[0, 49152)"),
    (COMP, comp(stop_token_ids=[10**30]), "stop_token_ids", None),
    (COMP, comp(stop_token_ids=[-1]), "stop_token_ids", None),
    (COMP, comp(prompt=[1, 2, 10**6]), "prompt", None),
    (COMP, comp(prompt=[1, 2, 10**6], stream=True), "prompt", None),
    (COMP, comp(prompt="word " * 9000, stream=True), "prompt", "context"),
    (COMP, comp(max_tokens=10**6), "max_tokens", "maximum context length"),
    (COMP, comp(max_tokens=2, min_tokens=10**6), "min_tokens", None),
    (CHAT, chat(max_completion_tokens=10**6), "max_completion_tokens", "context"),
    (COMP, comp(temperature=1e308), "temperature", "[0.0, 2.0]"),
    (COMP, comp(temperature=2.5), "temperature", "[0.0, 2.0]"),
    (COMP, b'{"prompt": "hi", "temperature": Infinity}', "temperature", "finite"),
    (COMP, b'{"prompt": "hi", "temperature": NaN}', "temperature", "finite"),
    (COMP, b'{"prompt": "hi", "top_p": 1e400}', "top_p", None),
    (COMP, comp(top_p=0), "top_p", "(0.0, 1.0]"),
    (COMP, comp(top_k=10**12), "top_k", "[-1, 2147483647]"),
    (COMP, comp(top_k=-2), "top_k", None),
    (COMP, comp(min_p=1.5), "min_p", "[0.0, 1.0]"),
    (COMP, comp(presence_penalty=3), "presence_penalty", "[-2.0, 2.0]"),
    (COMP, comp(frequency_penalty=-1e308), "frequency_penalty", "[-2.0, 2.0]"),
    (COMP, comp(repetition_penalty=0), "repetition_penalty", "(0.0, 2.0]"),
    (COMP, comp(repetition_penalty=1e308), "repetition_penalty", None),
    (COMP, comp(logprobs=21), "logprobs", "[0, 20]"),
    (CHAT, chat(top_logprobs=3), "top_logprobs", "logprobs"),
    (CHAT, chat(logprobs=True, top_logprobs=21), "top_logprobs", None),
    (COMP, comp(stream="yes"), "stream", "boolean"),
    (COMP, comp(max_tokens=True), "max_tokens", "integer"),
    (COMP, comp(max_tokens=2.0), "max_tokens", "integer"),
    (COMP, comp(temperature="0.5"), "temperature", None),
    (COMP, comp(ignore_eos=1), "ignore_eos", None),
    (COMP, comp(stream_options={"include_usage": True}), "stream_options", "stream"),
    (CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options", None),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages", None),
    (COMP, b'{"prompt": "\\ud800 lone surrogate"}', None, "JSON"),
    (CHAT, b'{"messages": [{"role": "user", "content": "\\udfff"}]}', None, "JSON"),
    (COMP, b'{"prompt": "\xed\xa0\x80"}', None, "JSON"),
    (COMP, DEEP, None, "JSON"),
]


def post(url: str, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        return httpx.post(url + path, content=body, headers=headers, timeout=60)
    return httpx.post(url + path, json=body, timeout=60)


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status and err["message"]
    return err


def test_every_bad_value_is_a_400_naming_the_field(server: Any) -> None:
    failures = []
    for path, body, param, text in CASES:
        r = post(server.url, path, body)
        try:
            err = assert_openai_error(r, 400)
            if param is not None:
                assert err["param"] and param in err["param"], err
            if text is not None:
                assert text in err["message"], err
        except AssertionError as exc:
            failures.append(f"{path} {str(body)[:80]}: {exc}")
    assert not failures, "\n".join(failures)
    # and the engine still serves
    ok = httpx.post(server.url + COMP, json=comp(max_tokens=3, ignore_eos=True), timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(server.url + "/health").status_code == 200


def test_the_largest_valid_values_are_served(server: Any) -> None:
    body = comp(seed=2**63 - 1, temperature=2.0, top_k=2**31 - 1, top_p=1e-9, min_p=1.0,
                repetition_penalty=2.0, presence_penalty=-2, frequency_penalty=2,
                stop_token_ids=[49151], min_tokens=2, max_tokens=3)  # fmt: skip
    r = post(server.url, COMP, body)
    assert r.status_code == 200, r.text
    # max_tokens may fill the context exactly, not one token more
    max_len = httpx.get(server.url + "/v1/models").json()["data"][0]["max_model_len"]
    france = [{"role": "user", "content": "What is the capital of France?"}]
    question = {"model": MODEL, "temperature": 0, "messages": france}
    n_prompt = post(server.url, CHAT, question | {"max_tokens": 1}).json()["usage"]["prompt_tokens"]
    fits = post(server.url, CHAT, question | {"max_tokens": max_len - n_prompt})
    assert fits.status_code == 200 and "Paris" in fits.json()["choices"][0]["message"]["content"]
    over = post(server.url, CHAT, question | {"max_tokens": max_len - n_prompt + 1})
    assert assert_openai_error(over, 400)["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/route", 404),
        ("POST", "/v1/embeddings", 404),
        ("GET", "/v1/completions", 405),
        ("DELETE", "/health", 405),
        ("PUT", "/v1/chat/completions", 405),
    ],
)
def test_unknown_routes_and_methods_get_openai_errors(
    server: Any, method: str, path: str, status: int
) -> None:
    r = httpx.request(method, server.url + path, timeout=30)
    err = assert_openai_error(r, status)
    assert path in err["message"]
    if status == 405:
        assert "allow" in r.headers


def test_openapi_declares_the_request_schemas(server: Any) -> None:
    spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
    for path, name in ((COMP, "CompletionRequest"), (CHAT, "ChatCompletionRequest")):
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["$ref"].endswith(name)
    schemas = spec["components"]["schemas"]
    comp_props = schemas["CompletionRequest"]["properties"]
    assert {"prompt", "max_tokens", "temperature", "stop_token_ids"} <= set(comp_props)
    assert "prompt" in schemas["CompletionRequest"]["required"]
    temp = next(s for s in comp_props["temperature"]["anyOf"] if s.get("type") == "number")
    assert temp["minimum"] == 0 and temp["maximum"] == 2
    assert schemas["ChatCompletionRequest"]["properties"]["messages"]["items"]["$ref"].endswith(
        "ChatMessage"
    )
    assert "ChatMessage" in schemas and "ErrorResponse" in schemas

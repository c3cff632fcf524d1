"""A fault inside the engine fails only the request it came from; a dead engine answers 503.

The real app and the real model on a loopback port, in this process, so the test can inject a
fault inside the engine (no request can trigger one once validation is right)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch
from tests.faults import fail_first_call

from deploylab.engine import AsyncEngine, EngineConfig, LLMEngine
from deploylab.engine.async_engine import MAX_STEP_FAILURES

from .conftest import MODEL, serve_in_thread

POISON = 1.25  # a presence_penalty value that the injected fault recognises


@pytest.fixture(scope="module")
def parts() -> tuple[Any, Any, Any]:
    from tests.smol import smol_model, smol_path, smol_tokenizer

    return smol_path(), smol_model(), smol_tokenizer()


def make_engine(parts: tuple[Any, Any, Any]) -> AsyncEngine:
    path, model, tokenizer = parts
    config = EngineConfig(
        model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.1, max_num_seqs=8,
        max_num_batched_tokens=512,
    )  # fmt: skip
    return AsyncEngine(engine=LLMEngine(config, model=model, tokenizer=tokenizer))


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Requests with presence_penalty POISON raise inside the sampler after 3 tokens."""
    import deploylab.engine.sampler as sampler

    real = sampler.apply_penalties

    def apply(row: torch.Tensor, seq: Any, params: Any) -> None:
        if params.presence_penalty == POISON and seq.num_output_tokens >= 3:
            raise RuntimeError("injected fault")
        real(row, seq, params)

    monkeypatch.setattr(sampler, "apply_penalties", apply)
    yield


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def normal(url: str, n: int = 6) -> Any:
    return client(url).completions.create(
        model=MODEL, prompt="The sky is", max_tokens=n, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip


def test_a_request_failing_in_the_engine_fails_alone(parts: Any, poisoned: None) -> None:
    with serve_in_thread(make_engine(parts)) as url:
        healthy: dict[str, Any] = {}

        def long_normal() -> None:
            healthy["resp"] = normal(url, 40)

        t = threading.Thread(target=long_normal)
        t.start()
        with pytest.raises(openai.InternalServerError) as info:
            client(url).completions.create(
                model=MODEL, prompt="Hello", max_tokens=20, presence_penalty=POISON
            )
        err = info.value.body
        assert isinstance(err, dict) and "injected fault" in err["message"], err
        # streamed: the 200 has gone, so the failure is a last error event, then [DONE]
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 20, "stream": True,
                "presence_penalty": POISON}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["error"]["code"] == 500 and "injected fault" in last["error"]["message"]
        assert len(events) >= 3  # some tokens came before the fault
        t.join(120)
        assert healthy["resp"].usage.completion_tokens == 40  # same batch, unharmed
        assert normal(url).choices[0].finish_reason == "length"
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_failed_step_fails_its_requests_and_the_server_goes_on(parts: Any) -> None:
    engine = make_engine(parts)
    engine.engine.runner.execute = fail_first_call(  # type: ignore[method-assign]
        engine.engine.runner.execute, RuntimeError("device hiccup")
    )
    with serve_in_thread(engine) as url:
        with pytest.raises(openai.InternalServerError, match="device hiccup"):
            normal(url)
        assert normal(url).usage.completion_tokens == 6
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_a_dead_engine_answers_503(parts: Any) -> None:
    engine = make_engine(parts)

    def broken(out: Any) -> Any:
        raise RuntimeError("device lost")

    engine.engine.runner.execute = broken  # type: ignore[method-assign]
    with serve_in_thread(engine) as url:
        statuses = []
        for _ in range(MAX_STEP_FAILURES + 1):
            with pytest.raises(openai.APIStatusError) as info:
                normal(url)
            statuses.append(info.value.status_code)
        assert statuses[0] == 500 and statuses[-1] == 503, statuses
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "error" and "device lost" in health.json()["detail"]
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"

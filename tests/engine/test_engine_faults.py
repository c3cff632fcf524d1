"""One bad request never ends the engine: values that would fail inside a step are rejected
up front, a request that fails inside a step fails alone, a failed step ends only its batch,
and only repeated failed steps (a broken engine) mark it dead."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from tests.faults import fail_first_call

from deploylab.engine import AsyncEngine, EngineDeadError, RequestDelta, SamplingParams
from deploylab.engine.async_engine import MAX_STEP_FAILURES, RequestFailedError
from deploylab.errors import InvalidRequestError

from .conftest import ModelParts


async def collect(engine: AsyncEngine, rid: str, prompt: list[int], params: SamplingParams):
    deltas: list[RequestDelta] = []
    async for d in engine.add_request(rid, prompt, params):
        deltas.append(d)
    return deltas


def ok_params(n: int = 10) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("temperature", math.inf),
        ("temperature", math.nan),
        ("top_p", math.nan),
        ("repetition_penalty", math.inf),
        ("presence_penalty", math.nan),
        ("min_p", math.nan),
    ],
)
def test_values_that_would_fail_in_a_step_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field


def test_stop_token_ids_outside_the_vocabulary_are_rejected(tiny: ModelParts) -> None:
    engine = tiny.engine()
    vocab = engine.model_config.vocab_size
    with pytest.raises(InvalidRequestError, match=r"\[0, ") as info:
        engine.make_sequence("r", [1, 2], SamplingParams(stop_token_ids=[vocab], min_tokens=2))
    assert info.value.param == "stop_token_ids"
    engine.make_sequence("r", [1, 2], SamplingParams(stop_token_ids=[vocab - 1], min_tokens=2))


def test_a_tiny_temperature_decodes_greedily(tiny: ModelParts) -> None:
    llm = tiny.llm()
    greedy = llm.generate([[5, 6, 7]], ok_params(8))[0].token_ids
    tiny_t = SamplingParams(temperature=1e-9, max_tokens=8, ignore_eos=True)
    assert llm.generate([[5, 6, 7]], tiny_t)[0].token_ids == greedy


async def test_a_request_failing_in_the_sampler_fails_alone(
    tiny: ModelParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = AsyncEngine(engine=tiny.engine())
    try:
        # A seed no torch generator takes, as if validation had missed it.
        bad = SamplingParams(temperature=1.0, max_tokens=10)
        monkeypatch.setattr(SamplingParams, "validate", lambda self: None)
        bad.seed = 2**70
        ok = asyncio.ensure_future(collect(engine, "ok", [5, 6], ok_params()))
        with pytest.raises(RequestFailedError, match="bad"):
            await collect(engine, "bad", [5, 6], bad)
        assert sum(len(d.new_token_ids) for d in await ok) == 10
        after = await collect(engine, "after", [7, 8], ok_params(4))
        assert after[-1].finish_reason == "length"
        assert engine.is_running
    finally:
        engine.shutdown()


async def test_a_request_failing_in_its_stop_check_fails_alone(
    tiny_tok: ModelParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deploylab.engine.llm_engine as llm_engine

    real = llm_engine.find_stop_string

    def poisoned(text: str, n_new: int, stops: list[str]) -> Any:
        if "POISON" in stops:
            raise RuntimeError("injected fault")
        return real(text, n_new, stops)

    monkeypatch.setattr(llm_engine, "find_stop_string", poisoned)
    engine = AsyncEngine(engine=tiny_tok.engine())
    try:
        ok = asyncio.ensure_future(collect(engine, "ok", [5, 6], ok_params(12)))
        bad = SamplingParams(temperature=0, max_tokens=12, stop=["POISON"], ignore_eos=True)
        with pytest.raises(RequestFailedError, match="injected fault"):
            await collect(engine, "bad", [5, 6], bad)
        assert sum(len(d.new_token_ids) for d in await ok) == 12
        assert engine.stats().num_running == 0 and engine.stats().kv_cache_usage == 0
        assert engine.is_running
    finally:
        engine.shutdown()


async def test_a_failed_step_ends_its_batch_and_the_loop_goes_on(tiny: ModelParts) -> None:
    core = tiny.engine()
    engine = AsyncEngine(engine=core)
    core.runner.execute = fail_first_call(  # type: ignore[method-assign]
        core.runner.execute, RuntimeError("device hiccup")
    )
    try:
        with pytest.raises(RequestFailedError, match="device hiccup"):
            await collect(engine, "a", [5, 6], ok_params())
        deltas = await collect(engine, "b", [5, 6], ok_params())
        assert sum(len(d.new_token_ids) for d in deltas) == 10
        core.block_manager.check_invariants()
        assert engine.stats().kv_cache_usage == 0
        assert engine.is_running and engine.dead_reason is None
    finally:
        engine.shutdown()


async def test_repeated_failed_steps_mark_the_engine_dead(tiny: ModelParts) -> None:
    core = tiny.engine()
    engine = AsyncEngine(engine=core)

    def broken(out: Any) -> Any:
        raise RuntimeError("device lost")

    core.runner.execute = broken  # type: ignore[method-assign]
    try:
        errors = []
        for i in range(MAX_STEP_FAILURES):
            with pytest.raises((RequestFailedError, EngineDeadError)) as info:
                await collect(engine, f"r{i}", [5, 6], ok_params())
            errors.append(info.value)
        assert isinstance(errors[0], RequestFailedError)
        assert isinstance(errors[-1], EngineDeadError)
        for _ in range(100):
            if not engine.is_running:
                break
            await asyncio.sleep(0.05)
        assert not engine.is_running
        assert "device lost" in (engine.dead_reason or "")
        with pytest.raises(EngineDeadError):
            engine.add_request("late", [1, 2], ok_params())
    finally:
        engine.shutdown()

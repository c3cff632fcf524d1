"""AsyncEngine: hundreds of concurrent asyncio callers, streaming deltas, abort, admission
control, stats, and clean failure after shutdown."""

from __future__ import annotations

import asyncio
import random

import pytest

from deploylab.engine import AsyncEngine, EngineDeadError, RequestDelta, SamplingParams
from deploylab.errors import EngineOverloadedError, InvalidRequestError

from .conftest import ModelParts


async def collect(engine: AsyncEngine, rid: str, prompt: list[int], params: SamplingParams):
    deltas: list[RequestDelta] = []
    async for d in engine.add_request(rid, prompt, params):
        deltas.append(d)
    return deltas


async def test_hundreds_of_concurrent_callers(tiny: ModelParts) -> None:
    rng = random.Random(0)
    jobs = []
    for i in range(300):
        prompt = [rng.randrange(3, 500) for _ in range(rng.randint(1, 30))]
        params = SamplingParams(temperature=0, max_tokens=rng.randint(1, 12), ignore_eos=True)
        jobs.append((f"r{i}", prompt, params))
    engine = AsyncEngine(engine=tiny.engine(max_num_seqs=64))
    try:
        results = await asyncio.gather(*(collect(engine, *job) for job in jobs))
    finally:
        engine.shutdown()
    expected = tiny.llm().generate([j[1] for j in jobs], [j[2] for j in jobs])
    for (rid, prompt, params), deltas, ref in zip(jobs, results, expected, strict=True):
        assert deltas[-1].finish_reason == "length"
        assert all(not d.finished for d in deltas[:-1])
        assert all(d.request_id == rid and d.num_prompt_tokens == len(prompt) for d in deltas)
        tokens = [t for d in deltas for t in d.new_token_ids]
        assert len(tokens) == params.max_tokens
        assert tokens == ref.token_ids
    stats = engine.stats()
    assert stats.num_requests_finished_total == 300
    assert stats.generation_tokens_total == sum(j[2].max_tokens or 0 for j in jobs)
    assert stats.prompt_tokens_total == sum(len(j[1]) for j in jobs)
    assert stats.num_running == 0 and stats.kv_cache_usage == 0.0


async def test_abort_mid_stream_frees_blocks(tiny: ModelParts) -> None:
    engine = AsyncEngine(engine=tiny.engine(enable_prefix_caching=False))
    try:
        stream = engine.add_request("long", list(range(3, 40)), SamplingParams(max_tokens=500))
        other = asyncio.ensure_future(
            collect(engine, "other", [5, 6], SamplingParams(max_tokens=30, ignore_eos=True))
        )
        got = 0
        last = None
        async for d in stream:
            got += len(d.new_token_ids)
            last = d
            if got == 3:
                stream.abort()
        assert last is not None and last.finish_reason == "abort"
        assert got < 500
        others = await other
        assert others[-1].finish_reason == "length"
        await asyncio.sleep(0.05)
        assert engine.stats().kv_cache_usage == 0.0
    finally:
        engine.shutdown()


async def test_generate_aborts_when_the_caller_stops(tiny: ModelParts) -> None:
    engine = AsyncEngine(engine=tiny.engine())
    try:
        agen = engine.generate([7, 8, 9], SamplingParams(max_tokens=1000), request_id="g")
        async for _ in agen:
            break
        await agen.aclose()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if engine.stats().num_running == 0:
                break
        assert engine.stats().num_running == 0
    finally:
        engine.shutdown()


async def test_admission_control_rejects_when_waiting_is_full(tiny: ModelParts) -> None:
    engine = AsyncEngine(engine=tiny.engine(max_num_seqs=1, max_waiting=4))
    try:
        first = engine.add_request("busy", [3, 4], SamplingParams(max_tokens=200))
        await first.__anext__()  # it runs; everything after it waits
        streams = [
            engine.add_request(f"w{i}", [3, 4], SamplingParams(max_tokens=1)) for i in range(4)
        ]
        with pytest.raises(EngineOverloadedError, match="max_waiting"):
            engine.add_request("too-many", [3, 4], SamplingParams(max_tokens=1))
        first.abort()
        for s in streams:
            async for d in s:
                last = d
            assert last.finish_reason == "length"
        assert engine.stats().num_waiting == 0
    finally:
        engine.shutdown()


async def test_bad_requests_raise_at_once_and_others_continue(tiny: ModelParts) -> None:
    engine = AsyncEngine(engine=tiny.engine(max_model_len=32))
    try:
        ok = asyncio.ensure_future(
            collect(engine, "ok", [5, 6], SamplingParams(max_tokens=8, ignore_eos=True))
        )
        with pytest.raises(InvalidRequestError):
            engine.add_request("bad", [], SamplingParams())
        with pytest.raises(InvalidRequestError):
            engine.add_request("bad2", list(range(40)), SamplingParams())
        with pytest.raises(InvalidRequestError, match="top_p"):
            engine.add_request("bad3", [1], SamplingParams(top_p=2.0))
        deltas = await ok
        assert sum(len(d.new_token_ids) for d in deltas) == 8
    finally:
        engine.shutdown()


async def test_shutdown_fails_new_requests(tiny: ModelParts) -> None:
    engine = AsyncEngine(engine=tiny.engine())
    engine.shutdown()
    assert not engine.is_running
    with pytest.raises(EngineDeadError):
        engine.add_request("late", [1, 2], SamplingParams())

"""Async scheduling (engine/async_step.py): the same tokens, text, stops and deltas as the
synchronous engine, with the real model; aborts and preemption mid-flight; no KV leak."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine import LLMEngine, SamplingParams
from deploylab.engine.kv_cache import bytes_per_block

from .conftest import ModelParts

Delta = tuple[tuple[int, ...], str, str | None, int | str | None]


def stream(
    engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]], logprobs: list
) -> dict:
    """Every delta of every (request, sample), in order; nothing may follow a final delta.
    The deltas' logprobs are appended to `logprobs`, in order."""
    for i, (ids, params) in enumerate(requests):
        engine.add_request(f"r{i}", ids, params)
    seen: dict[tuple[str, int], list[Delta]] = {}
    while engine.has_unfinished_requests():
        for d in engine.step():
            got = seen.setdefault((d.request_id, d.index), [])
            assert not got or got[-1][2] is None, f"a delta after the end of {d.request_id}"
            got.append((tuple(d.new_token_ids), d.new_text, d.finish_reason, d.stop_reason))
            logprobs += d.logprobs or []
    return seen


def assert_no_leak(engine: LLMEngine) -> None:
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_async_steps_match_sync_steps_real_model(
    smol: ModelParts, smol_chat_ids: list[list[int]]
) -> None:
    ids = smol_chat_ids
    sync = smol.engine()
    free, free4 = smol.llm().generate(
        [ids[1], ids[4]], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    )
    stop_str = free.text[len(free.text) // 2 : len(free.text) // 2 + 4]
    stop_tok = free4.token_ids[3]
    requests = [
        (ids[0], SamplingParams(temperature=0, max_tokens=24)),  # ends with EOS
        (ids[1], SamplingParams(temperature=0, max_tokens=32, stop=[stop_str])),
        (ids[2], SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=20)),
        (ids[3], SamplingParams(temperature=1.0, n=2, seed=5, max_tokens=12)),
        (ids[4], SamplingParams(temperature=0, stop_token_ids=[stop_tok], min_tokens=2)),
        (ids[2], SamplingParams(temperature=0, max_tokens=5, logprobs=2)),
        (ids[1], SamplingParams(temperature=0.7, seed=9, max_tokens=4, logprobs=0)),
    ]
    want_lp: list = []
    want = stream(sync, requests, want_lp)
    engine = smol.engine(async_scheduling=True)
    got_lp: list = []
    got = stream(engine, requests, got_lp)
    assert got == want
    assert len(got_lp) == len(want_lp) == 9
    for g, w in zip(got_lp, want_lp, strict=True):
        assert g.token_id == w.token_id and [t for t, _ in g.top] == [t for t, _ in w.top]
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [v for _, v in g.top] == pytest.approx([v for _, v in w.top], abs=1e-4)
    finishes = {v[-1][2:] for v in want.values()}
    assert ("stop", stop_str) in finishes and ("stop", stop_tok) in finishes
    assert ("stop", None) in finishes  # EOS
    assert engine.overlap is not None
    assert engine.overlap.steps_overlapped > engine.overlap.steps_sync > 0
    assert_no_leak(engine)
    assert all(t >= 0 for s in engine._seqs.values() for t in s.token_ids)


def test_abort_mid_stream_reports_no_token_in_flight(
    smol: ModelParts, smol_chat_ids: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    expected = smol.llm().generate(smol_chat_ids[:2], params)
    engine = smol.engine(async_scheduling=True)
    engine.add_request("a", smol_chat_ids[0], params)
    engine.add_request("b", smol_chat_ids[1], params)
    streamed: dict[str, list[int]] = {"a": [], "b": []}
    for _ in range(6):
        for d in engine.step():
            streamed[d.request_id] += d.new_token_ids
    assert engine.overlap is not None and engine.overlap.inflight is not None
    last = engine.abort_request("a")
    assert last is not None and last.finish_reason == "abort" and last.new_token_ids == []
    while engine.has_unfinished_requests():
        for d in engine.step():
            assert d.request_id == "b"
            streamed["b"] += d.new_token_ids
    assert streamed["a"] == expected[0].token_ids[: len(streamed["a"])]
    assert 0 < len(streamed["a"]) < 16
    assert streamed["b"] == expected[1].token_ids
    assert_no_leak(engine)


def test_preemption_under_async_scheduling_keeps_tokens(
    smol: ModelParts, smol_chat_ids: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    expected = [o.token_ids for o in smol.llm().generate(smol_chat_ids, params)]
    per_block = bytes_per_block(smol.model.config, 16, torch.float32)
    llm = smol.llm(
        kv_cache_gib=10.5 * per_block / 1024**3, max_model_len=144, async_scheduling=True
    )
    engine = llm.llm_engine
    engine.scheduler.watermark_blocks = 0  # admit up to the last block, so decodes preempt
    outs = llm.generate(smol_chat_ids, params)
    assert engine.stats().num_preemptions_total > 0
    assert [o.token_ids for o in outs] == expected
    assert_no_leak(engine)


def test_async_scheduling_is_refused_beside_speculation(tiny: ModelParts) -> None:
    spec = {"method": "ngram", "num_speculative_tokens": 2}
    engine = tiny.engine(async_scheduling=True, speculative_config=spec)
    assert engine.overlap is None
    assert tiny.engine(async_scheduling=True).overlap is not None


def test_default_is_off_on_the_cpu(tiny: ModelParts) -> None:
    """The default (None) turns async scheduling on with CUDA only; on the CPU it gains
    nothing (tests/engine/test_async_scheduling_gpu.py checks the CUDA default)."""
    assert tiny.engine().overlap is None
    assert tiny.engine(async_scheduling=False).overlap is None


def test_chunked_prefill_and_mixed_steps_overlap_too(tiny: ModelParts) -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = [[(7 * i + j) % 500 + 1 for j in range(40 + 9 * i)] for i in range(4)]
    small = {"max_num_batched_tokens": 24, "max_num_seqs": 4}
    expected = [o.token_ids for o in tiny.llm(**small).generate(prompts, params)]
    llm = tiny.llm(async_scheduling=True, **small)
    assert [o.token_ids for o in llm.generate(prompts, params)] == expected
    engine = llm.llm_engine
    assert engine.overlap is not None and engine.overlap.steps_sync == 0
    assert engine.overlap.steps_overlapped == engine.stats().num_steps_total
    assert_no_leak(engine)


async def test_async_engine_streams_with_async_scheduling(tiny: ModelParts) -> None:
    import asyncio

    from deploylab.engine import AsyncEngine

    jobs = []
    for i in range(40):
        prompt = [(13 * i + j) % 500 + 3 for j in range(1 + i % 17)]
        params = SamplingParams(temperature=0, max_tokens=1 + i % 9, ignore_eos=True)
        jobs.append((f"r{i}", prompt, params))
    engine = AsyncEngine(engine=tiny.engine(max_num_seqs=8, async_scheduling=True))

    async def collect(rid: str, prompt: list[int], params: SamplingParams) -> list[int]:
        return [t async for d in engine.add_request(rid, prompt, params) for t in d.new_token_ids]

    async def aborted() -> list[int]:
        tokens: list[int] = []
        params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
        async for d in engine.add_request("long", [5, 6, 7], params):
            tokens += d.new_token_ids
            assert d.finish_reason != "length"
            if len(tokens) >= 5 and not d.finished:
                engine.abort("long")
        return tokens

    try:
        results = await asyncio.gather(aborted(), *(collect(*job) for job in jobs))
    finally:
        engine.shutdown()
    expected = tiny.llm().generate([j[1] for j in jobs], [j[2] for j in jobs])
    assert results[1:] == [o.token_ids for o in expected]
    ref = tiny.llm().generate(
        [[5, 6, 7]], SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    )[0]
    assert 5 <= len(results[0]) < 400 and results[0] == ref.token_ids[: len(results[0])]
    assert engine.stats().kv_cache_usage == 0.0

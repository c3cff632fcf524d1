"""Scheduler behaviour on a tiny random model: continuous batching, chunked prefill under the
token budget, max_num_seqs, preemption by recompute, abort, and output invariance."""

from __future__ import annotations

import random

from deploylab.engine import SamplingParams

from .conftest import ModelParts

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 500) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def test_chunked_prefill_respects_budget_and_keeps_decodes_going(tiny: ModelParts) -> None:
    engine = tiny.engine(max_num_batched_tokens=8, max_num_seqs=4, enable_prefix_caching=False)
    engine.add_request("short", [5, 6, 7], SamplingParams(temperature=0, max_tokens=40))
    engine.step()  # prefill of the short prompt
    engine.add_request("long", list(range(10, 70)), SamplingParams(temperature=0, max_tokens=2))
    short_tokens = 0
    for _ in range(8):
        out = engine.scheduler.schedule()
        assert out.num_tokens <= 8
        names = [s.seq.request_id for s in out.scheduled]
        assert names[0] == "short"  # the decode is scheduled first, every step
        seqs, logits = engine.runner.execute(out)
        engine.scheduler.update_after_step(out)
        assert logits is not None
        tokens, lps = engine.sampler(logits, seqs)
        for seq, tok, lp in zip(seqs, tokens, lps, strict=True):
            engine._append_token(seq, tok, lp)
            if seq.request_id == "short":
                short_tokens += 1
    assert short_tokens == 8


def test_max_num_seqs_bounds_the_batch(tiny: ModelParts) -> None:
    engine = tiny.engine(max_num_seqs=3)
    for i, p in enumerate(prompts(7)):
        engine.add_request(f"r{i}", p, GREEDY)
    while engine.has_unfinished_requests():
        assert engine.scheduler.num_running <= 3
        engine.step()
    assert engine.stats().num_requests_finished_total == 7


def test_mixed_batch_equals_each_alone(tiny: ModelParts) -> None:
    ps = prompts(6, seed=1)
    batched = [o.token_ids for o in tiny.llm().generate(ps, GREEDY)]
    llm = tiny.llm()
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in ps]
    assert batched == alone


def test_chunked_equals_unchunked(tiny: ModelParts) -> None:
    ps = prompts(6, seed=2, lo=20, hi=90)
    full = [o.token_ids for o in tiny.llm(enable_prefix_caching=False).generate(ps, GREEDY)]
    chunked = tiny.llm(max_num_batched_tokens=7, max_num_seqs=4, enable_prefix_caching=False)
    assert [o.token_ids for o in chunked.generate(ps, GREEDY)] == full


def test_preemption_by_recompute_keeps_outputs(tiny: ModelParts) -> None:
    ps = prompts(8, seed=3, lo=20, hi=40)
    full = [o.token_ids for o in tiny.llm().generate(ps, GREEDY)]
    from deploylab.engine.kv_cache import bytes_per_block

    per_block = bytes_per_block(tiny.model.config, 4, tiny.model.lm_head.weight.dtype)
    small = tiny.llm(block_size=4, kv_cache_gib=25 * per_block / 1024**3, max_model_len=96)
    outs = small.generate(ps, GREEDY)
    assert small.llm_engine.stats().num_preemptions_total > 0
    assert [o.token_ids for o in outs] == full


def test_prefix_cache_hit_equals_miss(tiny: ModelParts) -> None:
    shared = prompts(1, seed=4, lo=40, hi=40)[0]
    ps = [shared + tail for tail in prompts(4, seed=5, lo=1, hi=9)]
    miss = [o.token_ids for o in tiny.llm(enable_prefix_caching=False).generate(ps, GREEDY)]
    llm = tiny.llm()
    llm.generate(ps[:1], GREEDY)
    hit = llm.generate(ps, GREEDY)
    assert [o.token_ids for o in hit] == miss
    assert all(o.num_cached_tokens >= 32 for o in hit)


def test_abort_returns_all_blocks_at_once(tiny: ModelParts) -> None:
    engine = tiny.engine(enable_prefix_caching=False)
    bm = engine.block_manager
    engine.add_request("a", list(range(3, 40)), SamplingParams(max_tokens=100))
    engine.add_request("b", list(range(3, 20)), SamplingParams(max_tokens=100))
    for _ in range(3):
        engine.step()
    used = bm.num_blocks - bm.num_free_blocks
    seq_a = engine._seqs["a"]
    blocks_a = len(seq_a.block_table)
    assert blocks_a > 0
    delta = engine.abort_request("a")
    assert delta is not None and delta.finish_reason == "abort"
    assert bm.num_blocks - bm.num_free_blocks == used - blocks_a
    assert engine.abort_request("a") is None
    engine.abort_request("b")
    assert bm.num_free_blocks == bm.num_blocks
    assert not engine.has_unfinished_requests()


def test_waiting_request_abort(tiny: ModelParts) -> None:
    engine = tiny.engine(max_num_seqs=1)
    engine.add_request("a", [5, 6, 7], SamplingParams(max_tokens=5))
    engine.add_request("b", [5, 6, 7], SamplingParams(max_tokens=5))
    engine.step()
    assert engine.scheduler.num_waiting == 1
    engine.abort_request("b")
    assert engine.scheduler.num_waiting == 0

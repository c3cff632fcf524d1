"""Speculative decoding in the engine (n-gram proposer): greedy identity with the plain
engine under mixed batches, chunked prefill, preemption and prefix hits; KV rollback leaves
no leaked or wrongly hashed block; stop/max_tokens/logprobs exact; config errors."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from tests.engine.conftest import ModelParts

from deploylab.engine import LLMEngine, SamplingParams
from deploylab.engine.kv_cache import bytes_per_block
from deploylab.engine.outputs import RequestOutput
from deploylab.errors import ConfigError, InvalidRequestError

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "adaptive": False}


def looping_prompts(n: int, seed: int = 0) -> list[list[int]]:
    """Prompts that repeat a random phrase (n-gram matches) with a shared 32-token prefix
    (prefix-cache hits)."""
    rng = random.Random(seed)
    shared = [rng.randrange(3, 512) for _ in range(32)]
    prompts = []
    for i in range(n):
        phrase = [rng.randrange(3, 512) for _ in range(5 + i % 7)]
        prompts.append(shared + phrase * (2 + i % 3) + phrase[:2])
    return prompts


def check_engine(engine: LLMEngine) -> None:
    """Block pools consistent; every running sequence holds exactly the blocks of its computed
    tokens, no drafts, and its hashed blocks hold its own (accepted) tokens."""
    bm = engine.block_manager
    bm.check_invariants()
    bs = bm.block_size
    for seq in engine.scheduler.running:
        assert seq.num_draft_tokens == 0
        assert len(seq.block_table) == -(-seq.num_computed_tokens // bs)
        for i in range(seq.num_hashed_blocks):
            block = seq.block_table[i]
            if bm.block_hash[block] is not None:
                assert bm.block_tokens[block] == tuple(seq.token_ids[i * bs : (i + 1) * bs])


def run(engine: LLMEngine, prompts: list[Any], params: list[SamplingParams]) -> list[RequestOutput]:
    """Generate step by step, checking the engine's invariants after every step."""
    outs = {}
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        seq = engine.add_request(f"r{i}", prompt, p)
        outs[seq.request_id] = RequestOutput(seq.request_id, seq.prompt, seq.prompt_token_ids)
    while engine.has_unfinished_requests():
        for delta in engine.step():
            outs[delta.request_id].add(delta)
        check_engine(engine)
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    return list(outs.values())


class ReplayProposer:
    """Drafts the tokens a request produced in an earlier run (`outputs[request_id]`)."""

    free_to_propose = True

    def __init__(self, outputs: dict[str, list[int]]) -> None:
        self.outputs = outputs

    def propose(self, seqs: Any, ks: Any) -> list[list[int]]:
        return [
            self.outputs[s.request_id][s.num_output_tokens : s.num_output_tokens + k]
            for s, k in zip(seqs, ks, strict=True)
        ]


def greedy_params(n: int, spec_off_every: int = 3) -> list[SamplingParams]:
    """Greedy requests of different lengths; every third one opts out of speculation."""
    return [
        SamplingParams(
            temperature=0,
            max_tokens=12 + i % 9,
            ignore_eos=True,
            num_speculative_tokens=0 if i % spec_off_every == 0 else None,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"max_num_batched_tokens": 24, "max_num_seqs": 8},  # chunked prefill, cut drafts
        {"enable_prefix_caching": False},
    ],
    ids=["plain", "chunked", "no-prefix-cache"],
)
def test_greedy_output_identical_to_plain_engine(tiny: ModelParts, settings: dict) -> None:
    engine = keeps_greedy(tiny, NGRAM, **settings)
    stats = engine.spec.stats  # type: ignore[union-attr]
    assert stats.num_accepted_tokens > 0 and stats.num_draft_tokens > stats.num_accepted_tokens


def test_fewer_target_passes_than_tokens(tiny: ModelParts) -> None:
    prompts = looping_prompts(1)
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)]
    plain = tiny.engine()
    run(plain, prompts, params)
    engine = tiny.engine(speculative_config=NGRAM)
    run(engine, prompts, params)
    stats = engine.spec.stats  # type: ignore[union-attr]
    assert engine.stats().generation_tokens_total == plain.stats().generation_tokens_total == 40
    assert engine.stats().num_steps_total == plain.stats().num_steps_total - (
        stats.num_accepted_tokens
    )


def keeps_greedy(
    tiny: ModelParts, spec_config: dict[str, Any], n: int = 12, seed: int = 0, **settings: Any
) -> LLMEngine:
    """Greedy output of `n` looping prompts with `spec_config` equals the plain engine's
    (same `settings` on both sides). The speculating engine, for more checks."""
    prompts = looping_prompts(n, seed=seed)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(**settings), prompts, params)
    engine = tiny.engine(speculative_config=spec_config, **settings)
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    return engine


def pressure_keeps_greedy(tiny: ModelParts, spec_config: dict[str, Any]) -> LLMEngine:
    """Speculation on a cache small enough to preempt, run twice (the second run hits the
    prefix cache): both runs' greedy output equals plain decoding's. The engine, for more
    checks."""
    prompts = looping_prompts(10, seed=1)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(), prompts, params)
    per_block = bytes_per_block(tiny.model.config, 16, torch.float32)
    engine = tiny.engine(
        speculative_config=spec_config, kv_cache_gib=14.5 * per_block / 1024**3, max_model_len=96
    )
    engine.scheduler.watermark_blocks = 0  # admit up to the last block, so decodes preempt
    first = run(engine, prompts, params)
    again = run(engine, prompts, params)  # the shared prefix and whole prompts are cached
    assert engine.stats().num_preemptions_total > 0
    assert engine.stats().prefix_cache_hits > 0
    assert [o.token_ids for o in first] == [o.token_ids for o in expected]
    assert [o.token_ids for o in again] == [o.token_ids for o in expected]
    return engine


def test_prefix_hits_and_preemption_keep_greedy_output(tiny: ModelParts) -> None:
    engine = pressure_keeps_greedy(tiny, NGRAM)
    assert engine.spec.stats.num_accepted_tokens > 0  # type: ignore[union-attr]


def test_max_tokens_and_min_tokens_exact(tiny: ModelParts) -> None:
    """With and without logprobs (the per-sequence and the batched greedy verification),
    stop tokens are banned below min_tokens at every draft position, as the sampler does:
    the stop tokens are the ones the request would emit unbanned."""
    prompts = looping_prompts(12, seed=2)
    free = run(tiny.engine(), prompts, [SamplingParams(temperature=0, max_tokens=8)] * 12)
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=1 + i % 6 * 2,
            min_tokens=i % 6,
            logprobs=2 if i < 6 else None,
            stop_token_ids=free[i].token_ids[1:3],
        )
        for i in range(12)
    ]
    expected = run(tiny.engine(), prompts, params)
    engine = tiny.engine(speculative_config=NGRAM)
    engine.spec.proposer = ReplayProposer(  # type: ignore[union-attr]
        {f"r{i}": o.token_ids for i, o in enumerate(free)}
    )
    got = run(engine, prompts, params)
    for e, g, p in zip(expected, got, params, strict=True):
        assert g.token_ids == e.token_ids
        assert len(g.token_ids) <= (p.max_tokens or 0)
        assert g.finish_reason == e.finish_reason
        if p.logprobs is None:
            continue
        assert g.logprobs is not None and e.logprobs is not None
        assert [lp.token_id for lp in g.logprobs] == g.token_ids
        for a, b in zip(g.logprobs, e.logprobs, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_stop_strings_and_eos_exact(tiny_tok: ModelParts) -> None:
    text = "one two three four five six one two three four five six one two three"
    prompts = [text, text + " four", "a b c a b c a b c a b", text]
    base = {"temperature": 0, "max_tokens": 30}
    params = [
        SamplingParams(**base, stop=[" three"]),
        SamplingParams(**base, stop=["five"], include_stop_str_in_output=True),
        SamplingParams(**base, ignore_eos=True),
        SamplingParams(**base, stop_token_ids=[2]),
    ]
    expected = run(tiny_tok.engine(), prompts, params)
    got = run(tiny_tok.engine(speculative_config=NGRAM), prompts, params)
    for e, g in zip(expected, got, strict=True):
        assert (g.text, g.token_ids, g.finish_reason, g.stop_reason) == (
            e.text,
            e.token_ids,
            e.finish_reason,
            e.stop_reason,
        )


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"method": "eagle", "num_speculative_tokens": 2}, "not supported"),
        ({"method": "ngram"}, "num_speculative_tokens is required"),
        ({"method": "ngram", "num_speculative_tokens": 0}, r"in \[1, 32\]"),
        ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, "unknown keys"),
        (
            {
                "method": "ngram",
                "num_speculative_tokens": 2,
                "prompt_lookup_min": 5,
                "prompt_lookup_max": 3,
            },
            "must not exceed",
        ),  # fmt: skip
        ("{not json", "not valid JSON"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_speculative_config_is_explained(tiny: ModelParts, config: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny.engine(speculative_config=config)


def test_bad_per_request_k_is_explained() -> None:
    with pytest.raises(InvalidRequestError, match="num_speculative_tokens"):
        SamplingParams(num_speculative_tokens=-1)


def test_engine_stats_and_prometheus_counters(tiny: ModelParts) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from deploylab.server.metrics import ServerMetrics

    engine = tiny.engine(speculative_config=NGRAM)
    run(engine, looping_prompts(3), greedy_params(3, spec_off_every=99))
    s = engine.stats()
    spec = engine.spec.stats  # type: ignore[union-attr]
    assert s.spec_num_drafts_total == spec.num_drafts > 0
    assert sum(s.spec_accepted_per_position) == s.spec_num_accepted_tokens_total > 0
    assert list(s.spec_accepted_per_position) == sorted(s.spec_accepted_per_position, reverse=True)
    text = ServerMetrics(engine.stats, "m").render().decode()
    samples = {
        (x.name, x.labels.get("position")): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }
    assert (
        samples[("vllm:spec_decode_num_draft_tokens_total", None)] == s.spec_num_draft_tokens_total
    )
    assert (
        samples[("vllm:spec_decode_num_accepted_tokens_per_pos_total", "0")]
        == (s.spec_accepted_per_position[0])
    )
    assert tiny.engine().stats().spec_num_drafts_total is None


def test_real_model_greedy_identity_on_a_quoting_prompt(smol: ModelParts) -> None:
    context = (
        "Context: The Rhine begins in the Swiss Alps, flows through Germany and the "
        "Netherlands, and empties into the North Sea."
    )
    convs = [
        [{"role": "user", "content": context + "\nRepeat the context word for word."}],
        [{"role": "user", "content": "What is the capital of France?"}],
    ]
    params = SamplingParams(temperature=0, max_tokens=24)
    expected = smol.llm().chat(convs, params)
    llm = smol.llm(speculative_config=NGRAM)
    got = llm.chat(convs, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert [o.text for o in got] == [o.text for o in expected]
    assert llm.llm_engine.stats().spec_num_accepted_tokens_total > 0
    assert llm.llm_engine.stats().num_steps_total < len(expected[0].token_ids)


def test_n_samples_and_prompt_logprobs_beside_drafting_requests(tiny: ModelParts) -> None:
    """Requests with n > 1 (forked in the step their prompt ends) and with prompt logprobs
    share steps with drafting requests: every output, sampled samples included (seeded, never
    drafted), equals the plain engine's, and no block leaks."""
    prompts = looping_prompts(6, seed=3)
    params = greedy_params(len(prompts))
    params[1] = SamplingParams(temperature=0.8, seed=7, n=3, max_tokens=10, ignore_eos=True)
    params[4] = SamplingParams(temperature=0, max_tokens=6, prompt_logprobs=2, ignore_eos=True)
    plain = tiny.llm().generate(prompts, params)
    llm = tiny.llm(speculative_config=NGRAM)
    got = llm.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in plain]
    assert len(got) == len(prompts) + 2  # three samples of the second prompt
    assert got[6].prompt_logprobs == plain[6].prompt_logprobs
    engine = llm.llm_engine
    assert engine.spec.stats.num_accepted_tokens > 0  # type: ignore[union-attr]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    engine.block_manager.check_invariants()

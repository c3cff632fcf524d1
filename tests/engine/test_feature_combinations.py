"""Engine features together on the real model: KV tiers, tree attention, speculative decoding
and sleep/wake in one engine keep greedy output identical to the plain engine."""

from __future__ import annotations

from deploylab.engine import LLM, SamplingParams

from .conftest import ModelParts

PROMPTS = [list(range(2000 + i, 2300 + i)) for i in range(4)]  # 300 tokens each
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
SMALL = {"kv_cache_gib": 0.02, "max_num_seqs": 8, "max_num_batched_tokens": 256}


def test_tiers_tree_speculation_and_sleep_together(smol: ModelParts) -> None:
    want = [o.token_ids for o in smol.llm(**SMALL).generate(PROMPTS, GREEDY)]
    ngram = {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_min": 1,
        "adaptive": False,
    }
    engine = smol.engine(
        kv_offload_gib=0.05, tree_attention=True, speculative_config=ngram, **SMALL
    )
    llm = LLM(llm_engine=engine)
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == want
    engine.sleep(1)
    engine.wake_up()
    # The device cache is too small for all four prompts: returning ones hit the host tier.
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == want
    stats = engine.stats()
    assert stats.external_prefix_cache_hits > 0
    samples = llm.generate([PROMPTS[0]], SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=6))
    assert len(samples) == 4
    assert engine.stats().num_tree_attention_steps_total > 0
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks

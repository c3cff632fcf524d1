"""Mixed-adapter batches match transformers + peft token for token (greedy)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from deploylab.engine import LLM, SamplingParams
from deploylab.engine.kv_cache import bytes_per_block
from deploylab.engine.models.hf_interop import transformers_twin

from .conftest import SPECS, greedy, save_adapter

N_NEW = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=N_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three saved peft adapters, prompts, and each (prompt, adapter)'s peft greedy tokens."""
    root = tmp_path_factory.mktemp("adapters")
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(rng.randrange(12, 40))] for _ in range(8)]
    names: list[str | None] = [None, "a8", "b4", "c16", "c16", None, "a8", "b4"]
    paths: dict[str, str] = {}
    models: dict[str | None, Any] = {None: transformers_twin(tiny.model)}
    for spec in SPECS:
        path, pm = save_adapter(tiny.model, spec, root)
        paths[spec.name], models[spec.name] = str(path), pm
    expected = [greedy(models[n], p, N_NEW) for p, n in zip(prompts, names, strict=True)]
    return {"paths": paths, "prompts": prompts, "names": names, "expected": expected}


def run(llm: LLM, ref: dict[str, Any]) -> list[list[int]]:
    outs = llm.generate(ref["prompts"], GREEDY, lora=ref["names"])
    return [o.token_ids for o in outs]


def test_adapters_change_the_answer(reference: dict[str, Any]) -> None:
    """Sanity of the reference: each adapter's tokens differ from the base model's."""
    ref = reference
    assert ref["expected"][1] != ref["expected"][0] or ref["prompts"][1] != ref["prompts"][0]
    base = {
        tuple(p): e
        for p, e, n in zip(ref["prompts"], ref["expected"], ref["names"], strict=True)
        if n is None
    }
    assert len(base) == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"max_num_batched_tokens": 7, "max_num_seqs": 4, "enable_prefix_caching": False},
        {"async_scheduling": True},
        {"async_scheduling": True, "max_num_batched_tokens": 7, "max_num_seqs": 4},
    ],
    ids=["one-batch", "chunked-prefill", "async", "async-chunked"],
)
def test_mixed_batch_matches_peft(
    tiny: Any, reference: dict[str, Any], overrides: dict[str, Any]
) -> None:
    llm = tiny.llm(lora_modules=reference["paths"], max_loras=3, max_lora_rank=16, **overrides)
    assert run(llm, reference) == reference["expected"]


def test_preemption_keeps_adapter_outputs(tiny: Any, reference: dict[str, Any]) -> None:
    per_block = bytes_per_block(tiny.model.config, 4, tiny.model.lm_head.weight.dtype)
    llm = tiny.llm(
        lora_modules=reference["paths"],
        max_loras=3,
        block_size=4,
        kv_cache_gib=14.5 * per_block / 1024**3,
        max_model_len=48,
    )
    assert run(llm, reference) == reference["expected"]
    assert llm.llm_engine.stats().num_preemptions_total > 0


def test_speculative_decoding_and_samples_keep_the_adapter(
    tiny: Any, reference: dict[str, Any]
) -> None:
    """n-gram speculative decoding verifies with each request's adapter, and `n` samples
    forked after the prompt keep it: greedy tokens still match peft."""
    ngram = {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_min": 1,
        "adaptive": False,  # fixed k: the test is about drafting with adapters
    }
    llm = tiny.llm(lora_modules=reference["paths"], max_loras=3, speculative_config=ngram)
    assert run(llm, reference) == reference["expected"]
    assert llm.llm_engine.stats().spec_num_drafts_total
    two = SamplingParams(temperature=0.0, max_tokens=N_NEW, ignore_eos=True, n=2)
    plain = tiny.llm(lora_modules=reference["paths"], max_loras=3)
    outs = plain.generate(reference["prompts"][1:4], two, lora=reference["names"][1:4])
    assert [o.token_ids for o in outs] == [e for e in reference["expected"][1:4] for _ in "ab"]

"""The real SmolLM2-135M-Instruct GGUF: exact greedy agreement with transformers, and the
engine paths (prefix cache, chunked prefill, preemption) that must not change outputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from deploylab.engine import SamplingParams
from deploylab.engine.kv_cache import bytes_per_block

from .conftest import ModelParts, one_thread

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


SHORT = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def hf_smol(smol: ModelParts) -> Any:
    """transformers' Llama holding the same weights (transformers' own GGUF load takes 30+ s
    here; `test_gguf_weights_match_transformers_processing` checks the weights instead)."""
    from deploylab.engine.models.hf_interop import transformers_twin

    return transformers_twin(smol.model, eos_token_id=2, bos_token_id=1)


def test_gguf_weights_match_transformers_processing(smol: ModelParts) -> None:
    """Every tensor equals the dequantized GGUF tensor, q/k un-permuted as transformers does."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from deploylab.engine.models.gguf_loader import hf_name

    c = smol.model.config
    processor = LlamaTensorProcessor(
        config={
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
        }
    )
    params = dict(smol.model.named_parameters())
    checked = 0
    for t in GGUFReader(str(smol.path)).tensors:
        name = hf_name(t.name)
        assert name is not None, t.name
        weights = processor.process(dequantize(t.data, t.tensor_type), t.name).weights
        assert torch.equal(params[name], torch.from_numpy(weights.copy())), name
        checked += 1
    assert checked == len(params)


@pytest.fixture(scope="module")
def baseline(smol: ModelParts, smol_chat_ids: list[list[int]]) -> list[list[int]]:
    """Greedy outputs of all prompts batched together on a default engine."""
    with one_thread():
        outs = smol.llm().generate(smol_chat_ids, GREEDY)
    return [o.token_ids for o in outs]


def test_greedy_matches_transformers(
    hf_smol: Any, smol_chat_ids: list[list[int]], baseline: list[list[int]]
) -> None:
    assert len(smol_chat_ids) >= 4
    for ids, ours in zip(smol_chat_ids, baseline, strict=True):
        x = torch.tensor([ids])
        with torch.no_grad():
            y = hf_smol.generate(
                x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32
            )
        assert ours == y[0, len(ids) :].tolist()


def test_capital_of_france(smol: ModelParts) -> None:
    out = smol.llm().chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_tokens=20),
    )[0]
    assert out.text == "The capital of France is Paris."
    assert out.finish_reason == "stop"


def test_each_prompt_alone_equals_batch(
    smol: ModelParts, smol_chat_ids: list[list[int]], baseline: list[list[int]]
) -> None:
    llm = smol.llm(enable_prefix_caching=False)
    for ids, expected in zip(smol_chat_ids[2:], baseline[2:], strict=True):
        assert llm.generate([ids], SHORT)[0].token_ids == expected[:16]


def test_prefix_cache_hit_gives_same_tokens(
    smol: ModelParts, smol_chat_ids: list[list[int]], baseline: list[list[int]]
) -> None:
    llm = smol.llm()
    expected = [b[:16] for b in baseline]
    first = [o.token_ids for o in llm.generate(smol_chat_ids, SHORT)]
    stats_before = llm.llm_engine.stats()
    again = llm.generate(smol_chat_ids, SHORT)
    stats = llm.llm_engine.stats()
    assert first == expected
    assert [o.token_ids for o in again] == expected
    assert all(o.num_cached_tokens > 0 for o in again)
    assert stats.prefix_cache_hits - stats_before.prefix_cache_hits > 0
    assert stats.prefix_cache_queries > stats.prefix_cache_hits


def test_chunked_prefill_gives_same_tokens(
    smol: ModelParts, smol_chat_ids: list[list[int]], baseline: list[list[int]]
) -> None:
    llm = smol.llm(max_num_batched_tokens=16, max_num_seqs=8, enable_prefix_caching=False)
    outs = llm.generate(smol_chat_ids, SHORT)
    assert [o.token_ids for o in outs] == [b[:16] for b in baseline]


def test_preemption_and_resume_gives_same_tokens(
    smol: ModelParts, smol_chat_ids: list[list[int]], baseline: list[list[int]]
) -> None:
    per_block = bytes_per_block(smol.model.config, 16, torch.float32)
    llm = smol.llm(kv_cache_gib=10.5 * per_block / 1024**3, max_model_len=144)
    engine = llm.llm_engine
    engine.scheduler.watermark_blocks = 0  # admit up to the last block, so decodes preempt
    outs = llm.generate(smol_chat_ids, SHORT)
    assert engine.stats().num_preemptions_total > 0
    assert [o.token_ids for o in outs] == [b[:16] for b in baseline]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_streamed_text_equals_full_decode(smol: ModelParts, baseline: list[list[int]]) -> None:
    llm = smol.llm()
    prompts = ["Write a short poem about Zürich, café crème and 日本.", "Count to ten: 1, 2,"]
    outs = llm.generate(prompts, SamplingParams(temperature=0.8, seed=3, max_tokens=24))
    for o in outs:
        assert o.text == smol.tokenizer.decode(
            o.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        assert o.text


def test_logprobs_match_log_softmax(smol: ModelParts, smol_chat_ids: list[list[int]]) -> None:
    ids = smol_chat_ids[0]
    out = smol.llm().generate([ids], SamplingParams(temperature=0, max_tokens=6, logprobs=3))[0]
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
    full = torch.tensor([ids + out.token_ids])
    with torch.no_grad():
        logits = smol.model.compute_logits(smol.model(full, torch.arange(full.shape[1])[None]))[0]
    ref = torch.log_softmax(logits, dim=-1)
    for i, lp in enumerate(out.logprobs):
        row = ref[len(ids) - 1 + i]
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(row[lp.token_id].item(), abs=1e-4)
        top = row.topk(3)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert lp.top[0][0] == lp.token_id  # greedy picks the top token

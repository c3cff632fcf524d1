"""`n` samples forked after prefill (shared KV blocks, copy-on-write), prompt logprobs
(checked against transformers), and structured output, all on the real SmolLM2 model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from deploylab.engine import SamplingParams
from deploylab.engine.structured import StructuredOutput
from deploylab.errors import InvalidRequestError

from .conftest import ModelParts

# 37 tokens: two full blocks of 16 shared by every sample, and a partial third one that each
# sample must copy before writing its first generated token into it.
PROMPT = list(range(1000, 1037))


def test_n_samples_share_prompt_blocks_and_match_separate_requests(smol: ModelParts) -> None:
    engine = smol.engine(enable_prefix_caching=False)
    bm = engine.block_manager
    params = SamplingParams(n=4, temperature=1.0, seed=11, max_tokens=12, ignore_eos=True)
    engine.add_request("r", PROMPT, params)
    deltas = engine.step()  # prefill, fork, first token of every sample
    assert sorted(d.index for d in deltas) == [0, 1, 2, 3]
    parent = engine._seqs["r"]
    children = engine._forks["r"]
    tables = [parent.block_table] + [c.block_table for c in children]
    assert all(t == tables[0] for t in tables)  # before anyone writes: one set of blocks
    assert [bm.ref_counts[b] for b in tables[0]] == [4, 4, 4]
    assert bm.num_blocks - bm.num_free_blocks == 3
    deltas += engine.step()  # each sample writes its first token into the partial block: copy
    tables = [parent.block_table] + [c.block_table for c in children]
    assert len({t[2] for t in tables}) == 4  # the last block is now private to each sample
    assert all(t[:2] == tables[0][:2] for t in tables)  # the full blocks are still shared
    assert [bm.ref_counts[b] for b in tables[0][:2]] == [4, 4]
    forked: dict[int, list[int]] = {i: [] for i in range(4)}
    for d in deltas:
        forked[d.index] += d.new_token_ids
    while engine.has_unfinished_requests():
        for d in engine.step():
            forked[d.index] += d.new_token_ids
            if d.request_finished:
                assert all(s.is_finished for s in [parent, *children])
    assert bm.num_free_blocks == bm.num_blocks
    # Sample i is exactly what a separate request seeded seed + i produces.
    llm = smol.llm(enable_prefix_caching=False)
    separate = llm.generate(
        [PROMPT] * 4,
        [
            SamplingParams(temperature=1.0, seed=11 + i, max_tokens=12, ignore_eos=True)
            for i in range(4)
        ],
    )
    assert [forked[i] for i in range(4)] == [o.token_ids for o in separate]
    assert len({tuple(v) for v in forked.values()}) > 1  # the samples differ


def test_n_counts_toward_max_num_seqs(smol: ModelParts) -> None:
    engine = smol.engine(max_num_seqs=4)
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("big", PROMPT, SamplingParams(n=5))
    assert err.value.param == "n"
    engine.add_request("a", PROMPT, SamplingParams(n=3, max_tokens=4, ignore_eos=True))
    engine.add_request("b", PROMPT, SamplingParams(n=2, max_tokens=4, ignore_eos=True))
    engine.step()
    assert engine.scheduler.num_running == 3 and engine.scheduler.num_waiting == 1
    outs = smol.llm(max_num_seqs=4).generate(
        [PROMPT, PROMPT[:20]], SamplingParams(n=3, max_tokens=4, ignore_eos=True)
    )
    assert [o.index for o in outs] == [0, 1, 2, 0, 1, 2]
    assert all(len(o.token_ids) == 4 for o in outs)


def test_abort_ends_every_sample(smol: ModelParts) -> None:
    engine = smol.engine()
    engine.add_request("r", PROMPT, SamplingParams(n=3, max_tokens=50, ignore_eos=True))
    engine.step()
    deltas = engine.abort("r")
    assert sorted(d.index for d in deltas) == [0, 1, 2]
    assert [d.request_finished for d in deltas] == [False, False, True]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.has_unfinished_requests()


@pytest.fixture(scope="module")
def hf_smol(smol: ModelParts) -> Any:
    from deploylab.engine.models.hf_interop import transformers_twin

    return transformers_twin(smol.model, eos_token_id=2, bos_token_id=1)


@pytest.mark.parametrize("chunk", [512, 16])  # one prefill chunk, or chunks of 16 tokens
def test_prompt_logprobs_match_transformers(smol: ModelParts, hf_smol: Any, chunk: int) -> None:
    ids = smol.tokenizer.encode("The quick brown fox jumps over the lazy dog because it was")
    ids = ids + smol.tokenizer.encode(" very happy about the weather in Paris today.")
    engine = smol.engine(max_num_batched_tokens=chunk, max_num_seqs=4)
    params = SamplingParams(max_tokens=0, prompt_logprobs=2, temperature=0)
    outs = smol.llm(max_num_batched_tokens=chunk, max_num_seqs=4).generate(ids, params)
    del engine
    out = outs[0]
    assert out.token_ids == [] and out.finish_reason == "length"
    got = out.prompt_logprobs
    assert got is not None and len(got) == len(ids) and got[0] is None
    with torch.inference_mode():
        ref = torch.log_softmax(hf_smol(torch.tensor([ids])).logits[0].float(), dim=-1)
    for t, entry in enumerate(got[1:], start=1):
        assert entry is not None and entry.token_id == ids[t]
        assert entry.logprob == pytest.approx(ref[t - 1, ids[t]].item(), abs=1e-3)
        best = ref[t - 1].topk(2)
        assert [i for i, _ in entry.top] == best.indices.tolist()


def test_prompt_logprobs_with_a_generated_token(smol: ModelParts) -> None:
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, logprobs=0, temperature=0)
    out = smol.llm().generate(PROMPT, params)[0]
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(PROMPT)
    assert len(out.token_ids) == 1 and out.logprobs is not None and len(out.logprobs) == 1


def test_max_tokens_zero_needs_prompt_logprobs() -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(max_tokens=0)
    assert err.value.param == "max_tokens"


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "capital"],
    "additionalProperties": False,
}


def test_json_schema_output_is_valid_for_every_sample(smol: ModelParts) -> None:
    spec = StructuredOutput("json_schema", json.dumps(SCHEMA))
    enc = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}],
        tokenize=True,
        add_generation_prompt=True,
    )
    ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    params = SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=40, structured_output=spec)
    outs = smol.llm().generate(ids, params)
    for out in outs:
        assert out.finish_reason == "stop", out.text
        value = json.loads(out.text)
        assert (
            set(value) == {"city", "capital"}
            and value["city"] in SCHEMA["properties"]["city"]["enum"]
        )  # type: ignore[index]
        assert isinstance(value["capital"], bool)


def test_bad_schema_is_rejected_up_front(smol: ModelParts) -> None:
    engine = smol.engine()
    bad = StructuredOutput("json_schema", '{"type": "no-such-type"}')
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("x", PROMPT, SamplingParams(structured_output=bad))
    assert err.value.param == "response_format"
    assert not engine.has_unfinished_requests()


def test_prompt_logprobs_through_one_token_chunks(smol: ModelParts, hf_smol: Any) -> None:
    """A 15-token prompt beside it leaves one token of a 16-token budget: the logprobs prompt
    then computes a one-token chunk (a decode-shaped row) that must still be scored."""
    engine = smol.engine(max_num_batched_tokens=16, max_num_seqs=2, enable_prefix_caching=False)
    engine.add_request("other", list(range(2000, 2015)), SamplingParams(max_tokens=8))
    ids = list(range(3000, 3030))
    engine.add_request("lp", ids, SamplingParams(max_tokens=1, prompt_logprobs=0))
    engine.step()
    assert engine._seqs["lp"].num_computed_tokens == 1
    got = None
    while engine.has_unfinished_requests():
        for d in engine.step():
            if d.request_id == "lp" and d.prompt_logprobs is not None:
                got = d.prompt_logprobs
    assert got is not None and len(got) == len(ids)
    with torch.inference_mode():
        ref = torch.log_softmax(hf_smol(torch.tensor([ids])).logits[0].float(), dim=-1)
    for t in range(1, len(ids)):
        entry = got[t]
        assert entry is not None
        assert entry.logprob == pytest.approx(ref[t - 1, ids[t]].item(), abs=1e-3)

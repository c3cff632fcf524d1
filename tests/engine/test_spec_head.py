"""The learned-head proposer: the runner's hidden-state hook, greedy identity with the plain
engine (mixed k, chunked prefill, preemption, prefix hits; no leaked blocks), the shipped
head on the real model, config errors, and the distillation pipeline end to end (tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.engine.conftest import ModelParts
from tests.engine.test_spec_decode import greedy_params, looping_prompts, pressure_keeps_greedy, run

from deploylab.engine import SamplingParams
from deploylab.engine.spec_decode.head import DraftHead, HeadProposer, default_head_path
from deploylab.errors import ConfigError


def random_head(parts: ModelParts, path: Path, vocab: int = 64) -> str:
    config = parts.model.config
    torch.manual_seed(0)
    head = DraftHead(config.hidden_size, torch.arange(vocab))
    head.save(path)
    return str(path)


def head_config(path: str, adaptive: bool = False) -> dict:
    return {"method": "head", "num_speculative_tokens": 3, "head_path": path, "adaptive": adaptive}


def test_runner_keeps_the_sampled_rows_hidden_states(tiny: ModelParts, tmp_path: Path) -> None:
    engine = tiny.engine(speculative_config=head_config(random_head(tiny, tmp_path / "h")))
    runner = engine.runner
    assert runner.keep_hidden
    seen = []
    execute = runner.execute

    def spy(out):  # noqa: ANN001, ANN202
        seqs, logits = execute(out)
        seen.append((runner.sample_hidden, logits))
        return seqs, logits

    runner.execute = spy  # type: ignore[method-assign]
    run(engine, looping_prompts(3), greedy_params(3))
    assert seen
    for hidden, logits in seen:
        assert hidden is not None and logits is not None
        torch.testing.assert_close(tiny.model.compute_logits(hidden), logits)
    proposer = engine.spec.proposer  # type: ignore[union-attr]
    assert isinstance(proposer, HeadProposer) and proposer.states


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_num_batched_tokens": 24, "max_num_seqs": 8}],
    ids=["plain", "chunked"],
)
def test_head_greedy_output_identical(tiny: ModelParts, tmp_path: Path, settings: dict) -> None:
    prompts = looping_prompts(10, seed=4)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(**settings), prompts, params)
    path = random_head(tiny, tmp_path / "h.safetensors", vocab=512)
    engine = tiny.engine(speculative_config=head_config(path), **settings)
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.spec.stats.num_draft_tokens > 0  # type: ignore[union-attr]


def test_head_with_preemption_and_prefix_hits(tiny: ModelParts, tmp_path: Path) -> None:
    path = random_head(tiny, tmp_path / "h.safetensors", vocab=512)
    pressure_keeps_greedy(tiny, head_config(path))


@pytest.mark.skipif(
    not default_head_path("smollm2-135m-instruct").is_file(), reason="no shipped head"
)
def test_shipped_head_on_the_real_model(smol: ModelParts, smol_chat_ids: list) -> None:
    """The shipped head drafts tokens the real model accepts, with greedy output unchanged,
    next to a sampled request (exact rule) and a request that opts out."""
    params = [
        SamplingParams(temperature=0, max_tokens=24),
        SamplingParams(temperature=0, max_tokens=24, num_speculative_tokens=0),
        SamplingParams(temperature=0.8, seed=3, max_tokens=24),
        SamplingParams(temperature=0, max_tokens=24),
    ]
    prompts = smol_chat_ids[:4]
    expected = smol.llm().generate(prompts, params)
    llm = smol.llm(speculative_config={"method": "head", "num_speculative_tokens": 3})
    got = llm.generate(prompts, params)
    for i in (0, 1, 3):
        assert got[i].token_ids == expected[i].token_ids
    stats = llm.llm_engine.stats()
    assert stats.spec_num_accepted_tokens_total > 0
    assert llm.llm_engine.block_manager.num_free_blocks == llm.llm_engine.block_manager.num_blocks


def test_head_config_errors(tiny: ModelParts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        tiny.engine(speculative_config=head_config(str(tmp_path / "missing.safetensors")))
    wrong = DraftHead(tiny.model.config.hidden_size + 8, torch.arange(8))
    wrong.save(tmp_path / "wrong.safetensors")
    with pytest.raises(ConfigError, match="hidden size"):
        tiny.engine(speculative_config=head_config(str(tmp_path / "wrong.safetensors")))
    with pytest.raises(ConfigError, match="head_path"):
        tiny.engine(
            speculative_config={"method": "ngram", "num_speculative_tokens": 2, "head_path": "x"}
        )


def test_distillation_pipeline_end_to_end(tiny_tok: ModelParts, tmp_path: Path) -> None:
    """Generate with the target, build two-step rows, train, measure, save, serve."""
    from deploylab.engine.spec_decode import train_head as th

    llm = tiny_tok.llm()
    rows = th.generate(llm, th.prompts(0)[:6], max_tokens=12)
    assert all(len(r["hidden"]) >= 10 for r in rows)
    data = th.examples(rows, tiny_tok.model)
    assert len(data["y1"]) > 20 and data["h0"].shape[1] == tiny_tok.model.config.hidden_size
    vocab = th.draft_vocabulary(data, 64, tiny_tok.model.config.vocab_size)
    untrained = th.agreement(DraftHead(data["h0"].shape[1], vocab), tiny_tok.model, data)[0]
    args = th.parse_args(["--epochs", "25", "--batch", "16", "--lr", "1e-2"])
    head = th.train(data, tiny_tok.model, vocab, args)
    first, second = th.agreement(head, tiny_tok.model, data)
    assert 0.0 <= second <= 1.0
    assert first > max(0.3, 2 * untrained)  # the training rows themselves are learnt
    path = tmp_path / "t.safetensors"
    head.save(path, {"agreement_first": str(first)})
    engine = tiny_tok.engine(speculative_config=head_config(str(path)))
    assert engine.spec is not None

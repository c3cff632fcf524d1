"""The draft-model proposer: a layer-truncated draft (shared weights) and a separate tiny
draft with its own paged KV cache; greedy identity with the plain engine under mixed k,
chunked prefill, preemption and prefix hits; the draft cache holds no blocks once every
request has finished; config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.engine.conftest import ModelParts
from tests.engine.test_models import save_hf_model
from tests.engine.test_spec_decode import greedy_params, looping_prompts, pressure_keeps_greedy, run

from deploylab.engine.spec_decode.draft_model import DraftModelProposer, truncated_model
from deploylab.errors import ConfigError

DRAFT = {"method": "draft_model", "num_speculative_tokens": 3, "draft_layers": 1, "adaptive": False}


def draft_is_clean(engine) -> None:  # noqa: ANN001
    proposer = engine.spec.proposer
    assert isinstance(proposer, DraftModelProposer)
    proposer.propose([], [])  # frees the shadows of finished requests
    proposer.blocks.check_invariants()
    assert proposer.blocks.num_free_blocks == proposer.blocks.num_blocks


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_num_batched_tokens": 24, "max_num_seqs": 8}],
    ids=["plain", "chunked"],
)
def test_draft_model_greedy_output_identical(tiny: ModelParts, settings: dict) -> None:
    prompts = looping_prompts(10, seed=7)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(**settings), prompts, params)
    engine = tiny.engine(speculative_config=DRAFT, **settings)
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    stats = engine.spec.stats  # type: ignore[union-attr]
    assert stats.num_draft_tokens > 0
    draft_is_clean(engine)


def test_separate_draft_model_file(tiny: ModelParts, tmp_path: Path) -> None:
    """A different (1-layer, HF safetensors) model with the target's vocabulary drafts from
    its own cache; a draft with another vocabulary is refused."""
    save_hf_model(tmp_path / "draft", "llama", vocab_size=512, num_hidden_layers=1)
    prompts = looping_prompts(8, seed=8)
    params = greedy_params(len(prompts))
    expected = run(tiny.engine(), prompts, params)
    cfg = {"method": "draft_model", "num_speculative_tokens": 3, "adaptive": False}
    engine = tiny.engine(speculative_config=cfg | {"model": str(tmp_path / "draft")})
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    proposer = engine.spec.proposer  # type: ignore[union-attr]
    assert proposer.runner.model.config.num_hidden_layers == 1
    assert engine.spec.stats.num_draft_tokens > 0  # type: ignore[union-attr]
    draft_is_clean(engine)
    save_hf_model(tmp_path / "other", "llama", vocab_size=300, num_hidden_layers=1)
    with pytest.raises(ConfigError, match="vocabulary"):
        tiny.engine(speculative_config=cfg | {"model": str(tmp_path / "other")})


def test_draft_model_with_preemption_and_prefix_hits(tiny: ModelParts) -> None:
    engine = pressure_keeps_greedy(tiny, DRAFT)
    draft_is_clean(engine)


def test_truncated_model_shares_the_targets_weights(tiny: ModelParts) -> None:
    draft = truncated_model(tiny.model, 1)
    assert draft.config.num_hidden_layers == 1
    assert draft.model.layers[0] is tiny.model.model.layers[0]
    assert draft.lm_head is tiny.model.lm_head
    assert not any(p.is_meta for p in draft.parameters())


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"draft_layers": 99}, "draft_layers must be in"),
        ({"draft_layers": 1, "model": "x"}, "exclusive"),
    ],
)
def test_draft_model_config_errors(tiny: ModelParts, extra: dict, match: str) -> None:
    cfg = {"method": "draft_model", "num_speculative_tokens": 2} | extra
    with pytest.raises(ConfigError, match=match):
        tiny.engine(speculative_config=cfg)
    with pytest.raises(ConfigError, match="need"):
        tiny.engine(speculative_config={"method": "ngram", "num_speculative_tokens": 2} | extra)

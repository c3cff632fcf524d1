"""The draft-model proposer: a layer-truncated draft (shared weights) and a separate tiny
draft with its own paged KV cache; greedy identity with the plain engine under mixed k,
chunked prefill, preemption and prefix hits; the draft cache holds no blocks once every
request has finished; config errors; token trees whose kept sibling rolls the draft back
(the tree identity tests with chunking and preemption are in test_spec_tree.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.engine.conftest import ModelParts
from tests.engine.test_models import save_hf_model
from tests.engine.test_spec_decode import greedy_params, looping_prompts, pressure_keeps_greedy, run

from deploylab.engine import SamplingParams
from deploylab.engine.sequence import Sequence
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


class SecondChoiceRunner:
    """The draft's runner with each row's two best logits swapped: its chain always starts
    with its second choice, and its real first choice becomes a sibling."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def execute(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        rows, logits = self.runner.execute(batch)
        assert logits is not None
        logits = logits.clone()
        top = logits.topk(2, dim=-1).indices
        pair = logits.gather(1, top)
        logits.scatter_(1, top, pair.flip(1))
        return rows, logits


@pytest.mark.parametrize("logprobs", [None, 2])
def test_a_kept_sibling_rolls_the_draft_back(tiny: ModelParts, logprobs: int | None) -> None:
    """A draft as good as the target but with its first two choices swapped: the target
    keeps a sibling (the draft's real first choice) in every tree, never the chain the shadow
    read, so every step's shadow is rolled back to before the tree. One kept token per tree
    shows each rollback left the draft's cache right (a stale chain token in it would make
    the draft guess from the wrong context); output and block pools stay clean. Greedy
    (batched path) and greedy with logprobs (per-sequence path)."""
    prompts = looping_prompts(6, seed=5)
    params = [
        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=logprobs)
        for _ in prompts
    ]
    expected = run(tiny.engine(), prompts, params)
    engine = tiny.engine(speculative_config={**DRAFT, "num_speculative_tokens": 4, "tree_width": 2})
    spec = engine.spec
    assert spec is not None
    proposer = DraftModelProposer(tiny.model, engine.runner, engine.runner.kv_cache.num_blocks)
    proposer.runner = SecondChoiceRunner(proposer.runner)  # type: ignore[assignment]
    spec.proposer = proposer
    kept: list[list[int]] = []
    keep_path = spec._keep_path

    def spy(seq: Sequence, path: list[int]) -> None:
        kept.append(list(path))
        keep_path(seq, path)

    spec._keep_path = spy  # type: ignore[method-assign]
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    st = spec.stats
    assert st.num_drafts > 0 and len(kept) == st.num_drafts
    assert all(len(path) == 1 and path[0] > 0 for path in kept)  # a sibling, every time
    assert st.num_accepted_tokens == st.num_drafts
    draft_is_clean(engine)


def test_draft_model_tree_on_the_real_model(
    smol: ModelParts, smol_chat_ids: list[list[int]]
) -> None:
    """SmolLM2 with its first 8 layers as the draft, trees of width 4: greedy output equals
    plain decoding in a mixed batch (one request never speculates); no block leaks."""
    params = [
        SamplingParams(temperature=0, max_tokens=16, num_speculative_tokens=0 if i == 1 else None)
        for i in range(len(smol_chat_ids))
    ]
    expected = run(smol.engine(), smol_chat_ids, params)
    config = {**DRAFT, "draft_layers": 8, "num_speculative_tokens": 4, "tree_width": 4}
    engine = smol.engine(speculative_config=config)
    got = run(engine, smol_chat_ids, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.spec is not None and engine.spec.stats.num_draft_tokens > 0
    draft_is_clean(engine)

"""The proposer interface: draft tokens for running sequences, no engine state touched."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Protocol

from deploylab.engine.sequence import Sequence

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner
    from deploylab.engine.spec_decode.config import SpeculativeConfig


class Proposer(Protocol):
    """Proposes up to `ks[i]` draft tokens to follow `seqs[i].token_ids` (fewer, or none,
    when it has no guess). Drafts are point masses: the verifier treats q(draft) = 1.

    `free_to_propose`: proposing costs next to nothing (prompt lookup), so the adaptive
    policy sees the actual proposals before choosing k; otherwise it chooses k first.
    """

    free_to_propose: bool

    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[list[int]]:
        """One list of draft token ids per sequence (len <= ks[i])."""
        ...

    def propose_tree(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> list[tuple[list[int], list[int]]]:
        """Per sequence a token tree of at most ks[i] nodes with up to `width` branches:
        (tokens, parents) in topological order, parent -1 the last real token."""
        ...


def make_proposer(config: SpeculativeConfig, runner: ModelRunner | None) -> Proposer:
    """The proposer `config.method` names."""
    from deploylab.engine.spec_decode.ngram import NgramProposer
    from deploylab.errors import ConfigError

    if config.method == "draft_model":
        from deploylab.engine.spec_decode.draft_model import (
            DraftModelProposer,
            load_draft,
            truncated_model,
        )

        if runner is None:
            raise ConfigError('speculative_config method "draft_model" needs the model runner.')
        target = runner.model
        if config.model is not None:
            draft = load_draft(config.model, target, runner.device)
        else:
            layers = config.draft_layers or max(1, target.config.num_hidden_layers // 4)
            draft = truncated_model(target, layers)
        return DraftModelProposer(draft, runner, runner.kv_cache.num_blocks)
    if config.method == "head":
        from deploylab.engine.spec_decode.head import HeadProposer, default_head_path, load_head_for

        if runner is None:
            raise ConfigError('speculative_config method "head" needs the engine\'s model runner.')
        path = config.head_path or default_head_path("smollm2-135m-instruct")
        return HeadProposer(load_head_for(path, runner), runner)

    return NgramProposer(config.prompt_lookup_max, config.prompt_lookup_min)

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


def make_proposer(config: SpeculativeConfig, runner: ModelRunner | None) -> Proposer:
    """The proposer `config.method` names."""
    from deploylab.engine.spec_decode.ngram import NgramProposer

    return NgramProposer(config.prompt_lookup_max, config.prompt_lookup_min)

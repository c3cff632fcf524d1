"""The proposer interface: draft tokens for running sequences, no engine state touched."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

from deploylab.engine.sequence import Sequence


class Proposer(Protocol):
    """Proposes up to `ks[i]` draft tokens to follow `seqs[i].token_ids` (fewer, or none,
    when it has no guess). Drafts are point masses: the verifier treats q(draft) = 1."""

    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[list[int]]:
        """One list of draft token ids per sequence (len <= ks[i])."""
        ...

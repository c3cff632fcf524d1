"""Prompt lookup (n-gram) proposer: copy what followed the latest earlier match of the
sequence's last n tokens, trying n from `prompt_lookup_max` down to `prompt_lookup_min`."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.tree_drafts import lookup_tree


def lookup(tokens: np.ndarray, k: int, n_max: int, n_min: int) -> list[int]:
    """Up to k tokens following the latest earlier occurrence of tokens' last n-gram."""
    total = len(tokens)
    for n in range(min(n_max, total - 1), n_min - 1, -1):
        pattern = tokens[total - n :]
        # Windows starting at 0 .. total - n - 1 (the suffix itself excluded).
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: total - 1], n)
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return tokens[start : start + k].tolist()
    return []


class NgramProposer:
    """Prompt lookup decoding (no model): strong when the output quotes its context."""

    free_to_propose = True

    def __init__(self, prompt_lookup_max: int, prompt_lookup_min: int) -> None:
        self.n_max = prompt_lookup_max
        self.n_min = prompt_lookup_min

    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[list[int]]:
        """Drafts per sequence from its own prompt and output (len <= ks[i])."""
        out: list[list[int]] = []
        for seq, k in zip(seqs, ks, strict=True):
            if k <= 0 or seq.num_tokens <= self.n_min:
                out.append([])
                continue
            tokens = np.asarray(seq.token_ids, dtype=np.int64)
            out.append(lookup(tokens, k, self.n_max, self.n_min))
        return out

    def propose_tree(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> list[tuple[list[int], list[int]]]:
        """Per sequence a token tree of at most ks[i] nodes from up to `width` different
        continuations: (tokens, parents) in topological order (`tree_drafts.lookup_tree`)."""
        out: list[tuple[list[int], list[int]]] = []
        for seq, k in zip(seqs, ks, strict=True):
            if k <= 0 or seq.num_tokens <= self.n_min:
                out.append(([], []))
                continue
            tokens = np.asarray(seq.token_ids, dtype=np.int64)
            out.append(lookup_tree(tokens, k, self.n_max, self.n_min, width))
        return out

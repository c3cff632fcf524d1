"""Enumerate draft tuples for small vocabularies: ordered tuples and multisets (count vectors).

The exact multi-draft rules (LP-optimal selection, induced proposals for distinct drafters)
sum over every possible set of K drafts; these helpers build those sets once.
"""

from __future__ import annotations

import itertools
import math

import torch

from deploylab.errors import InvalidRequestError

MAX_TUPLES = 1 << 18


def ordered_tuples(vocab: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """All V^K ordered draft tuples as a (V^K, K) long tensor."""
    n = vocab**k
    if n > MAX_TUPLES:
        raise InvalidRequestError(
            f"enumerating {vocab}^{k} = {n} draft tuples is too large (limit {MAX_TUPLES}); "
            "use i.i.d. drafts (q of shape (B, V)), fewer drafts, or a top-k truncated "
            "vocabulary.",
            param="q",
        )
    grid = torch.arange(n, device=device)
    digits = [(grid // vocab**i) % vocab for i in range(k)]
    return torch.stack(digits, dim=1)


def multisets(tokens: list[int], k: int) -> list[tuple[int, ...]]:
    """All size-K multisets over `tokens`, each a sorted tuple of token ids."""
    count = math.comb(len(tokens) + k - 1, k)
    if count > MAX_TUPLES:
        raise InvalidRequestError(
            f"{count} multisets of {k} drafts over {len(tokens)} tokens is too many "
            f"(limit {MAX_TUPLES}); lower the truncation size s or K.",
            param="s",
        )
    return list(itertools.combinations_with_replacement(sorted(tokens), k))


def multiset_log_count(ms: tuple[int, ...]) -> float:
    """log of the number of orderings of a multiset (the multinomial coefficient)."""
    counts: dict[int, int] = {}
    for t in ms:
        counts[t] = counts.get(t, 0) + 1
    return math.lgamma(len(ms) + 1) - sum(math.lgamma(c + 1) for c in counts.values())

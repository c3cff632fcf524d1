"""Closed forms for the best possible multi-draft acceptance with K i.i.d. drafts.

A selection rule can route a tuple only to a token it contains, so (Hall's theorem) an induced
proposal r is achievable iff r(S) <= P(some draft in S) = 1 - (1 - q(S))^K for every token
set S. That set is a polymatroid, so the best acceptance max_r sum_y min(p(y), r(y)) equals

    P*(acc) = min over token sets T of [ p(T) + 1 - q(T)^K ].

For K = 2 this is Khisti et al.'s Theorem 3, and P*(acc) = 1 iff p(S) >= q(S)^2 for every S
(their necessary-and-sufficient condition for two identical drafts). The minimum is reached at
a prefix of the tokens sorted by p/q ascending: for fixed q(T) the fractional-knapsack optimum
is such a prefix and the objective is concave in q(T) between breakpoints. So the bound costs
one sort, O(V log V), for any vocabulary.
"""

from __future__ import annotations

import itertools

import torch

from deploylab.errors import InvalidRequestError


def optimal_acceptance_iid(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """P*(acc) for K i.i.d. drafts from q; p, q: (..., V); returns (...)."""
    ratio = torch.where(q > 0, p / q.clamp_min(torch.finfo(q.dtype).tiny), torch.inf)
    order = ratio.argsort(dim=-1)
    ps = p.gather(-1, order).cumsum(-1)
    qs = q.gather(-1, order).cumsum(-1).clamp(max=1.0)
    vals = ps + 1 - qs**k
    return torch.minimum(vals.amin(-1), torch.ones_like(vals[..., 0]))


def subset_min_gap(p: torch.Tensor, q: torch.Tensor, k: int = 2) -> float:
    """min over proper non-empty token sets S of p(S) - q(S)^K, by enumeration (small V only).

    (The full and empty sets give exactly 0.) P*(acc) = 1 exactly when this is >= 0: Khisti
    et al.'s necessary-and-sufficient condition for K = 2 identical drafts.
    """
    v = p.shape[-1]
    if p.dim() != 1 or v > 20:
        raise InvalidRequestError("subset enumeration needs one p of at most 20 tokens.")
    best = float("inf")
    pl, ql = p.tolist(), q.tolist()
    for size in range(1, v):
        for subset in itertools.combinations(range(v), size):
            gap = sum(pl[i] for i in subset) - sum(ql[i] for i in subset) ** k
            best = min(best, gap)
    return best


def optimal_acceptance_by_subsets(p: torch.Tensor, q: torch.Tensor, k: int) -> float:
    """P*(acc) = min_T p(T) + 1 - q(T)^K by enumerating every T (small V; a test oracle)."""
    return min(1.0, 1.0 + min(0.0, subset_min_gap(p, q, k)))

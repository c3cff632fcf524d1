"""The canonical decomposition of multi-draft speculative sampling (Khisti et al. 2024).

Step 1 selects one of the K drafts with a rule beta_y(x_1..x_K) (probabilities over the
distinct tokens of the tuple). The selected token Y then has the induced proposal

    p_I(y) = sum over tuples of Q(x_1..x_K) * beta_y(x_1..x_K),

with Q the product of the drafters' distributions. Step 2 is single-draft speculative sampling
of Y against p with proposal p_I: keep Y with probability min(1, p(Y) / p_I(Y)), else sample
norm(max(0, p - p_I)). The output follows p for any valid beta; acceptance is
sum_y min(p(y), p_I(y)). The importance-sampling (IS) rule implemented here picks draft k
with probability proportional to w_k = p(x_k) / q_k(x_k); the LP rules live in
`selection_lp`.
"""

from __future__ import annotations

import torch

from deploylab.engine.spec.enumeration import ordered_tuples
from deploylab.engine.spec.induced import iid_importance_proposal
from deploylab.engine.spec.multi_common import draft_dists
from deploylab.engine.spec.sampling import (
    DraftChoice,
    gather_last,
    residual,
    sample_categorical,
    uniform,
)


def canonical_verify(
    p: torch.Tensor,
    drafts: torch.Tensor,
    select_probs: torch.Tensor,
    p_induced: torch.Tensor,
    generator: torch.Generator | None = None,
) -> DraftChoice:
    """Select a draft position by `select_probs` (B, K), then run single-draft speculative
    sampling of its token against p (B, V) with proposal `p_induced` (B, V)."""
    d = drafts.to(torch.long)
    b = d.shape[0]
    u = uniform((b,), p, generator)
    pos = sample_categorical(select_probs, generator)
    y = d.gather(1, pos.unsqueeze(1)).squeeze(1)
    ok = u * gather_last(p_induced, y) < gather_last(p, y)
    fresh = sample_categorical(residual(p, p_induced), generator)
    return DraftChoice(
        token=torch.where(ok, y, fresh),
        accepted_index=torch.where(ok, pos, torch.full_like(pos, -1)),
    )


def canonical_acceptance(p: torch.Tensor, p_induced: torch.Tensor) -> torch.Tensor:
    """Acceptance of the canonical scheme: sum_y min(p(y), p_I(y))."""
    return torch.minimum(p, p_induced).sum(-1)


def importance_weights(p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    """w = p(x) / q(x) where q(x) > 0, else 0 (such tuples have probability zero)."""
    return torch.where(q_x > 0, p_x / q_x.clamp_min(torch.finfo(q_x.dtype).tiny), 0.0)


def is_select_probs(p: torch.Tensor, qk: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """IS selection over draft positions: w_k / sum_j w_j, uniform when every w_k is 0.

    p: (..., V); qk: (..., K, V); drafts: (..., K). Returns (..., K).
    """
    d = drafts.to(torch.long)
    px = p.unsqueeze(-2).expand_as(qk).gather(-1, d.unsqueeze(-1)).squeeze(-1)
    qx = qk.gather(-1, d.unsqueeze(-1)).squeeze(-1)
    w = importance_weights(px, qx)
    total = w.sum(-1, keepdim=True)
    flat = torch.full_like(w, 1.0 / w.shape[-1])
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), flat)


def is_induced_enumerated(p: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
    """Exact p_I of the IS rule by summing over all V^K ordered tuples. p: (B, V); qk: (B, K, V)."""
    b, k, v = qk.shape
    tup = ordered_tuples(v, k, p.device)  # (M, K)
    m = tup.shape[0]
    idx = tup.unsqueeze(0).expand(b, m, k)
    q_t = qk.unsqueeze(1).expand(b, m, k, v).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    prob = q_t.prod(-1)  # (B, M)
    sel = is_select_probs(p.unsqueeze(1).expand(b, m, v), qk.unsqueeze(1).expand(b, m, k, v), idx)
    out = torch.zeros_like(p)
    out.scatter_add_(1, idx.reshape(b, m * k), (prob.unsqueeze(-1) * sel).reshape(b, m * k))
    return out


def is_induced_proposal(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """p_I of the IS rule: closed-form quadrature for i.i.d. drafts (q: (B, V), any V),
    enumeration for one drafter per draft (q: (B, K, V), small V^K only)."""
    if q.dim() == 2:
        return iid_importance_proposal(p, q, k)
    return is_induced_enumerated(p, q)


def importance_sampling_verify(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
) -> DraftChoice:
    """Canonical decomposition with the IS selection rule; exact for any drafters."""
    qk = draft_dists(p, q, drafts)
    k = drafts.shape[1]
    p_ind = is_induced_proposal(p, q, k)
    return canonical_verify(p, drafts, is_select_probs(p, qk, drafts), p_ind, generator)

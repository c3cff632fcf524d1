"""Recursive rejection over sibling drafts (SpecInfer / EAGLE style).

Candidates are tried in turn against the current residual r (r_0 = p): x_k is kept when
u_k * q_k(x_k) < r_{k-1}(x_k); after a rejection r_k = norm(max(0, r_{k-1} - q_k)). If every
candidate is rejected the token is sampled from r_K. Exact for any K and any drafters.
"""

from __future__ import annotations

import torch

from deploylab.engine.spec.multi_common import draft_dists, per_draft
from deploylab.engine.spec.sampling import (
    DraftChoice,
    gather_last,
    residual,
    sample_categorical,
    uniform,
)


def recursive_rejection(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
) -> DraftChoice:
    """Verify K sibling drafts per row; returns the emitted token and the kept draft index."""
    qk = draft_dists(p, q, drafts)
    b, k = drafts.shape
    d = drafts.to(torch.long)
    u = uniform((b, k), p, generator)
    r = p
    chosen = torch.full((b,), -1, dtype=torch.long, device=p.device)
    for i in range(k):
        qi = qk[:, i]
        ok = (u[:, i] * gather_last(qi, d[:, i]) < gather_last(r, d[:, i])) & (chosen < 0)
        chosen = torch.where(ok, torch.full_like(chosen, i), chosen)
        # Rows that already accepted keep updating r harmlessly: their r is never used again.
        r = residual(r, qi)
    fresh = sample_categorical(r, generator)
    kept = d.gather(1, chosen.clamp_min(0).unsqueeze(1)).squeeze(1)
    token = torch.where(chosen >= 0, kept, fresh)
    return DraftChoice(token=token, accepted_index=chosen)


def recursive_acceptance(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """P(some draft kept) = 1 - prod_k (1 - sum min(r_{k-1}, q_k)) for drafts x_k ~ q_k."""
    qk = per_draft(p, q, k)
    r = p
    miss = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    for i in range(k):
        qi = qk[..., i, :]
        miss = miss * (1 - torch.minimum(r, qi).sum(-1))
        r = residual(r, qi)
    return 1 - miss

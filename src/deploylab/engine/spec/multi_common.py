"""Shared input handling for multi-draft rules (K candidate tokens at one position)."""

from __future__ import annotations

import torch

from deploylab.engine.spec._checks import check_probs, check_same_device, check_tokens
from deploylab.errors import InvalidRequestError


def draft_dists(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """Validate (p, q, drafts) and return per-draft distributions of shape (B, K, V).

    p: (B, V). q: (B, V) when all K drafts come i.i.d. from one drafter, or (B, K, V) when
    draft k was sampled from its own q_k. drafts: (B, K) token ids.
    """
    check_probs("p", p, ndim=2)
    b, v = p.shape
    if drafts.dim() != 2:
        raise InvalidRequestError(
            f"drafts must be (B, K) token ids; got shape {tuple(drafts.shape)}.", param="drafts"
        )
    k = drafts.shape[1]
    check_tokens("drafts", drafts, v, (b, k))
    check_probs("q", q)
    if q.dim() == 2 and tuple(q.shape) == (b, v):
        qk = q.unsqueeze(1).expand(b, k, v)
    elif q.dim() == 3 and tuple(q.shape) == (b, k, v):
        qk = q
    else:
        raise InvalidRequestError(
            f"q has shape {tuple(q.shape)}; pass (B, V) = {(b, v)} for i.i.d. drafts or "
            f"(B, K, V) = {(b, k, v)} for one drafter per draft.",
            param="q",
        )
    check_same_device(p=p, q=q, drafts=drafts)
    return qk


def per_draft(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """q shaped like p (i.i.d.) or with an extra K axis -> (..., K, V), without validation."""
    if q.dim() == p.dim():
        return q.unsqueeze(-2).expand(*q.shape[:-1], k, q.shape[-1])
    return q

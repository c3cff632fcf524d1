"""SpecTr's K-sequential draft selection, K-SEQ (Sun et al. 2023), for K i.i.d. drafts.

With a division factor rho in [1, K], let beta(rho) = sum_x min(q(x), p(x) / rho). Draft x_i
is kept with probability min(1, p(x_i) / (rho * q(x_i))), trying i = 1..K in order. A token
then leaves with probability min(q, p / rho) * c(rho), c = (1 - (1 - beta)^K) / beta, which
stays below p exactly when c(rho) <= rho. If all K drafts are rejected (probability
(1 - beta)^K) the token is sampled from the remainder

    p_res = (p - min(q, p / rho) * c) / (1 - beta)^K,

so the output follows p. Acceptance is 1 - (1 - beta)^K, largest for the smallest valid rho;
we find it by bisection, keeping the upper end valid so rounding can only cost acceptance.
"""

from __future__ import annotations

import torch

from deploylab.engine.spec.multi_common import draft_dists
from deploylab.engine.spec.sampling import DraftChoice, gather_last, sample_categorical, uniform
from deploylab.errors import InvalidRequestError

_BISECT_STEPS = 40  # rho to within K * 2^-40


def _beta(p: torch.Tensor, q: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    return torch.minimum(q, p / rho.unsqueeze(-1)).sum(-1)


def _scale(beta: torch.Tensor, k: int) -> torch.Tensor:
    """c = (1 - (1 - beta)^K) / beta = sum_{j<K} (1 - beta)^j (finite at beta = 0)."""
    miss = 1 - beta
    return sum((miss**j for j in range(k)), torch.zeros_like(beta))


def spectr_rho(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """Smallest rho in [1, K] (to bisection precision) with c(rho) <= rho; shape p.shape[:-1]."""
    lo = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    hi = torch.full_like(lo, float(k))
    ok_at_one = _scale(_beta(p, q, lo), k) <= lo
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        ok = _scale(_beta(p, q, mid), k) <= mid
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return torch.where(ok_at_one, torch.ones_like(hi), hi)


def spectr_acceptance(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """P(some draft kept) = 1 - (1 - beta(rho*))^K for K i.i.d. drafts from q."""
    rho = spectr_rho(p, q, k)
    return 1 - (1 - _beta(p, q, rho)) ** k


def spectr_kseq(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
    rho: torch.Tensor | None = None,
) -> DraftChoice:
    """Verify K i.i.d. drafts (q: (B, V)) with K-SEQ; exact: the emitted token follows p.

    `rho` (B,) may be passed when already known (e.g. from `spectr_rho` on shared rows); any
    rho in [1, K] with c(rho) <= rho keeps the rule exact.
    """
    if q.dim() != 2:
        raise InvalidRequestError(
            "SpecTr K-SEQ needs K i.i.d. drafts from one drafter: pass q as (B, V). For one "
            "drafter per draft use recursive_rejection or the canonical (IS / LP) rules.",
            param="q",
        )
    draft_dists(p, q, drafts)
    b, k = drafts.shape
    d = drafts.to(torch.long)
    if rho is None:
        rho = spectr_rho(p, q, k)
    low = torch.minimum(q, p / rho.unsqueeze(-1))
    beta = low.sum(-1)
    u = uniform((b, k), p, generator)
    px = gather_last(p.unsqueeze(1).expand(b, k, -1), d)
    qx = gather_last(q.unsqueeze(1).expand(b, k, -1), d)
    ok = u * rho.unsqueeze(-1) * qx < px
    first = torch.where(ok.any(1), ok.to(torch.long).argmax(1), torch.full_like(d[:, 0], -1))
    c = _scale(beta, k).unsqueeze(-1)
    rest = (p - low * c).clamp_min(0)
    rest = torch.where(rest.sum(-1, keepdim=True) > 0, rest, p)
    fresh = sample_categorical(rest, generator)
    kept = d.gather(1, first.clamp_min(0).unsqueeze(1)).squeeze(1)
    return DraftChoice(token=torch.where(first >= 0, kept, fresh), accepted_index=first)

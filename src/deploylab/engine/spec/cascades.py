"""Speculative cascades (Narasimhan et al. 2024, "Faster Cascades via Speculative Decoding").

A deferral rule turns (p, q) into a new target pi, and speculative sampling then runs
against pi, so the output follows pi (not p): cascades trade faithfulness to the target for
acceptance. Sequence-level rules choose pi = q ("use the draft") or pi = p per position:

    chow: use q if max q >= 1 - alpha
    diff: use q if max q >= max p - alpha
    opt:  use q if max q >= max p - alpha * TV(q, p)

Token-level rules keep an accepted set A and mix
    pi(v) = q(v) 1[v in A] + (1 - q(A)) p(v),
with  v1: A = {v: q(v) >= max p - alpha},  v2: A = {v: p(v) >= max p - alpha},
      v3: A = {v: p(v) >= (1 - alpha) max p}.

Deferral tests read temperature-1 probabilities (`p_defer`, `q_defer`; default p and q).
Every rule is "off" (pi = p, plain speculative sampling) for alpha < -1; see
docs/speculative.md for which rules also reduce to plain sampling at alpha = 0.
"""

from __future__ import annotations

from enum import StrEnum

import torch

from deploylab.engine.spec.sampling import ChainResult, gather_last, uniform
from deploylab.engine.spec.single import check_chain, finish_chain
from deploylab.errors import InvalidRequestError


class DeferralRule(StrEnum):
    """Which deferral rule builds the cascade target pi."""

    CHOW = "chow"
    DIFF = "diff"
    OPT = "opt"
    V1 = "v1"
    V2 = "v2"
    V3 = "v3"


SEQUENCE_RULES = (DeferralRule.CHOW, DeferralRule.DIFF, DeferralRule.OPT)


def _rule(rule: DeferralRule | str) -> DeferralRule:
    try:
        return DeferralRule(rule)
    except ValueError:
        names = ", ".join(r.value for r in DeferralRule)
        raise InvalidRequestError(
            f"unknown deferral rule {rule!r}; choose one of {names}.", param="rule"
        ) from None


def cascade_target(
    p: torch.Tensor,
    q: torch.Tensor,
    rule: DeferralRule | str,
    alpha: float,
    p_defer: torch.Tensor | None = None,
    q_defer: torch.Tensor | None = None,
) -> torch.Tensor:
    """The cascade target pi (same shape as p) for rule and alpha."""
    r = _rule(rule)
    pd = p if p_defer is None else p_defer
    qd = q if q_defer is None else q_defer
    pmax = pd.amax(-1, keepdim=True)
    if r in SEQUENCE_RULES:
        qmax = qd.amax(-1, keepdim=True)
        if r is DeferralRule.CHOW:
            use_q = qmax >= 1 - alpha
        elif r is DeferralRule.DIFF:
            use_q = qmax >= pmax - alpha
        else:
            tv = 0.5 * (qd - pd).abs().sum(-1, keepdim=True)
            use_q = qmax >= pmax - alpha * tv
        return torch.where(use_q, q, p)
    if r is DeferralRule.V1:
        in_a = qd >= pmax - alpha
    elif r is DeferralRule.V2:
        in_a = pd >= pmax - alpha
    else:
        in_a = pd >= (1 - alpha) * pmax
    kept = torch.where(in_a, q, torch.zeros_like(q))
    return kept + (1 - kept.sum(-1, keepdim=True)).clamp_min(0) * p


def cascade_acceptance(
    p: torch.Tensor,
    q: torch.Tensor,
    rule: DeferralRule | str,
    alpha: float,
    p_defer: torch.Tensor | None = None,
    q_defer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probability that a draft x ~ q is kept: sum_x min(q(x), pi(x))."""
    pi = cascade_target(p, q, rule, alpha, p_defer, q_defer)
    return torch.minimum(q, pi).sum(-1)


def cascade_verify(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    rule: DeferralRule | str,
    alpha: float,
    generator: torch.Generator | None = None,
    p_defer: torch.Tensor | None = None,
    q_defer: torch.Tensor | None = None,
) -> ChainResult:
    """Speculative sampling of a draft chain against the cascade target pi.

    p: (B, gamma + 1, V); q and drafts as in `speculative_sampling`. The bonus token comes
    from p_{gamma+1} (no draft scores that position). Output follows pi at drafted positions.
    """
    _, gamma, _ = check_chain(p, q, drafts)
    pd = None if p_defer is None else p_defer[:, :gamma]
    pi = cascade_target(p[:, :gamma], q, rule, alpha, pd, q_defer)
    d = drafts.to(torch.long)
    u = uniform(tuple(d.shape), p, generator)
    accept = u * gather_last(q, d) < gather_last(pi, d)
    full = torch.cat([pi, p[:, gamma:]], dim=1)
    return finish_chain(d, accept, full, q, generator)

"""Single-draft speculative sampling (Leviathan et al. 2023; Chen et al. 2023) and greedy.

Notation: p = target distribution, q = draft distribution. A chain of gamma draft tokens
x_1..x_gamma (x_i ~ q_i) is verified against p_1..p_gamma plus p_{gamma+1} for the bonus.
"""

from __future__ import annotations

import torch

from deploylab.engine.spec._checks import check_probs, check_same_device, check_tokens
from deploylab.engine.spec.sampling import (
    _EMPTY,
    ChainResult,
    gather_last,
    residual,
    sample_categorical,
    uniform,
)
from deploylab.errors import InvalidRequestError


def check_chain(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> tuple[int, int, int]:
    """Validate chain inputs; return (B, gamma, V)."""
    check_probs("p", p, ndim=3)
    check_probs("q", q, ndim=3)
    b, g1, v = p.shape
    if tuple(q.shape) != (b, g1 - 1, v):
        raise_shape(p, q)
    check_tokens("drafts", drafts, v, (b, g1 - 1))
    check_same_device(p=p, q=q, drafts=drafts)
    return b, g1 - 1, v


def raise_shape(p: torch.Tensor, q: torch.Tensor) -> None:
    """Explain the chain shape contract."""
    raise InvalidRequestError(
        f"p has shape {tuple(p.shape)} and q {tuple(q.shape)}; for gamma draft tokens pass "
        "p as (B, gamma + 1, V) (the last row scores the bonus token) and q as (B, gamma, V).",
        param="q",
    )


def leading_run(accept: torch.Tensor) -> torch.Tensor:
    """(B, gamma) bool -> (B,) length of the all-True prefix."""
    return accept.to(torch.long).cumprod(dim=-1).sum(dim=-1)


def finish_chain(
    drafts: torch.Tensor,
    accept: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    generator: torch.Generator | None,
) -> ChainResult:
    """Keep the accepted prefix, then sample norm(max(0, p_j - q_j)) at the first rejection j,
    or a bonus token from p_{gamma+1} when every draft was kept."""
    b, gamma = drafts.shape
    n = leading_run(accept)
    rows = torch.arange(b, device=drafts.device)
    j = n.clamp(max=max(gamma - 1, 0))
    if gamma > 0:
        fix = residual(p[rows, j], q[rows, j])
        dist = torch.where((n < gamma).unsqueeze(-1), fix, p[rows, gamma])
    else:
        dist = p[:, 0]
    last = sample_categorical(dist, generator)
    tokens = torch.full((b, gamma + 1), -1, dtype=torch.long, device=drafts.device)
    keep = torch.arange(gamma, device=drafts.device).unsqueeze(0) < n.unsqueeze(-1)
    tokens[:, :gamma] = torch.where(keep, drafts.to(torch.long), tokens[:, :gamma])
    tokens[rows, n] = last
    return ChainResult(tokens=tokens, num_accepted=n)


def speculative_sampling(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None = None,
) -> ChainResult:
    """Verify a chain of drafts: keep x_i while u_i <= p_i(x_i) / q_i(x_i).

    p: (B, gamma + 1, V); q: (B, gamma, V); drafts: (B, gamma). Exact: emitted tokens follow p.
    """
    _, gamma, _ = check_chain(p, q, drafts)
    d = drafts.to(torch.long)
    px = gather_last(p[:, :gamma], d)
    qx = gather_last(q, d)
    u = uniform(tuple(d.shape), p, generator)
    # u * q < p instead of u < p / q: no division, and p(x) = 0 is never accepted.
    accept = u * qx < px
    return finish_chain(d, accept, p, q, generator)


def point_mass_sampling(
    p: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None = None
) -> ChainResult:
    """`speculative_sampling` for deterministic drafts (q_i a point mass on x_i, as prompt
    lookup and greedy heads propose), without building q: keep x_i while u_i < p_i(x_i);
    at the first rejection j sample p_j with x_j's mass removed (= norm(max(0, p_j - q_j))),
    else a bonus token from p_{gamma+1}. Same random draws as `speculative_sampling` with
    one-hot q, so the same tokens for the same generator state.

    p: (B, gamma + 1, V); drafts: (B, gamma)."""
    check_probs("p", p, ndim=3)
    b, g1, v = p.shape
    check_tokens("drafts", drafts, v, (b, g1 - 1))
    gamma = g1 - 1
    d = drafts.to(torch.long)
    px = gather_last(p[:, :gamma], d)
    u = uniform(tuple(d.shape), p, generator)
    n = leading_run(u < px)
    rows = torch.arange(b, device=p.device)
    dist = p[rows, n.clamp(max=gamma)].clone()  # p_j at the rejection, p_{gamma+1} if none
    rejected = n < gamma
    if bool(rejected.any()):
        j = n.clamp(max=max(gamma - 1, 0))
        cut = dist.clone()
        cut[rows, d[rows, j]] = 0.0
        mass = cut.sum(-1, keepdim=True)
        fix = torch.where(mass > _EMPTY, cut / mass.clamp_min(_EMPTY), dist)
        dist = torch.where(rejected.unsqueeze(-1), fix, dist)
    last = sample_categorical(dist, generator)
    tokens = torch.full((b, g1), -1, dtype=torch.long, device=p.device)
    keep = torch.arange(gamma, device=p.device).unsqueeze(0) < n.unsqueeze(-1)
    tokens[:, :gamma] = torch.where(keep, d, tokens[:, :gamma])
    tokens[rows, n] = last
    return ChainResult(tokens=tokens, num_accepted=n)


def greedy_verify(p: torch.Tensor, drafts: torch.Tensor) -> ChainResult:
    """Greedy verification: keep x_i while x_i == argmax p_i; then emit argmax p at the first
    mismatch (or argmax p_{gamma+1}). Reproduces greedy decoding of the target exactly."""
    check_probs("p", p, ndim=3)
    b, g1, v = p.shape
    check_tokens("drafts", drafts, v, (b, g1 - 1))
    best = p.argmax(dim=-1)
    gamma = g1 - 1
    d = drafts.to(torch.long)
    n = leading_run(d == best[:, :gamma])
    tokens = torch.full((b, g1), -1, dtype=torch.long, device=p.device)
    keep = torch.arange(gamma, device=p.device).unsqueeze(0) < n.unsqueeze(-1)
    tokens[:, :gamma] = torch.where(keep, d, tokens[:, :gamma])
    rows = torch.arange(b, device=p.device)
    tokens[rows, n] = best[rows, n]
    return ChainResult(tokens=tokens, num_accepted=n)


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Probability that one draft x ~ q is kept: sum_x min(p(x), q(x)) = 1 - TV(p, q)."""
    return torch.minimum(p, q).sum(-1)


def expected_tokens_per_pass(alpha: torch.Tensor, gamma: int) -> torch.Tensor:
    """Expected tokens emitted per target pass with gamma drafts at per-token acceptance alpha,
    assuming independent positions: (1 - alpha^(gamma+1)) / (1 - alpha)."""
    powers = torch.stack([alpha**i for i in range(gamma + 1)], dim=-1)
    return powers.sum(-1)

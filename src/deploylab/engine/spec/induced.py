"""Induced proposal of importance-sampling selection for K i.i.d. drafts, for any vocabulary.

With w(x) = p(x) / q(x), the IS rule picks draft k with probability w(x_k) / sum_j w(x_j).
By symmetry p_I(y) = K q(y) w(y) E[1 / (w(y) + S)] with S = sum of K - 1 i.i.d. w(X), X ~ q.
Writing 1/a = integral_0^inf exp(-t a) dt gives a one-dimensional integral

    E[1 / (w + S)] = integral_0^inf exp(-t w) phi(t)^(K-1) dt,  phi(t) = sum_x q(x) exp(-t w(x)),

evaluated with the trapezoid rule in log t (exponentially accurate for this smooth, doubly
decaying integrand). Tokens with p = 0 < q are picked only when every draft has weight 0,
where the rule falls back to a uniform position: p_I(y) = q(y) * q(Z)^(K-1), Z = {p = 0 < q}.
"""

from __future__ import annotations

import math

import torch

_STEP = 0.05  # trapezoid step in log t
_CHUNK = 8192  # vocabulary entries per chunk (bounds memory at B * chunk * nodes)


def _nodes(w_pos: torch.Tensor, has: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log-t grids covering the integrand's mass: (B, N) nodes and the step."""
    big = torch.where(has, w_pos, torch.zeros_like(w_pos)).amax(-1).clamp_min(1e-300)
    small = torch.where(has, w_pos, torch.full_like(w_pos, math.inf)).amin(-1)
    small = torch.where(torch.isfinite(small), small, big)
    lo = torch.log(1e-15 / (k * big))
    hi = torch.log(60.0 / small)
    n = int(math.ceil(float((hi - lo).max()) / _STEP)) + 1
    frac = torch.linspace(0, 1, n, dtype=w_pos.dtype, device=w_pos.device)
    s = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * frac
    step = (hi - lo) / max(n - 1, 1)
    return s, step


def iid_importance_proposal(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """p_I(y) of the IS rule for K i.i.d. drafts from q. p, q: (B, V); returns (B, V)."""
    dtype = p.dtype
    p64, q64 = p.to(torch.float64), q.to(torch.float64)
    has = (q64 > 0) & (p64 > 0)
    w = torch.where(has, p64 / q64.clamp_min(1e-300), torch.zeros_like(p64))
    s, step = _nodes(w, has, k)
    t = s.exp()  # (B, N)
    v = p.shape[-1]
    phi = torch.zeros_like(t)
    for a in range(0, v, _CHUNK):
        ws, qs = w[:, a : a + _CHUNK], q64[:, a : a + _CHUNK]
        phi += torch.einsum("bv,bvn->bn", qs, torch.exp(-ws.unsqueeze(-1) * t.unsqueeze(1)))
    trap = torch.full_like(t, 1.0)
    trap[:, 0] = trap[:, -1] = 0.5
    weight = trap * step.unsqueeze(-1) * t * phi.clamp_min(0) ** (k - 1)  # (B, N)
    expect = torch.zeros_like(p64)
    for a in range(0, v, _CHUNK):
        ws = w[:, a : a + _CHUNK]
        kern = torch.exp(-ws.unsqueeze(-1) * t.unsqueeze(1))
        expect[:, a : a + _CHUNK] = torch.einsum("bvn,bn->bv", kern, weight)
    out = torch.where(has, k * p64 * expect, torch.zeros_like(p64))
    zero_w = (q64 > 0) & (p64 <= 0)
    qz = torch.where(zero_w, q64, torch.zeros_like(q64)).sum(-1, keepdim=True)
    out = torch.where(zero_w, q64 * qz ** (k - 1), out)
    return out.to(dtype)

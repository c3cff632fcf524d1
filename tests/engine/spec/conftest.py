"""Chi-square goodness-of-fit helper and (p, q) cases for the speculative-rule tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

# Rejection threshold. Seeds are fixed, so a run is deterministic; this level keeps the chance
# that a correct rule fails tiny while wrong rules score p-values far below it (see the
# negative controls in test_spec_single.py).
P_MIN = 1e-5
N_SAMPLES = 200_000


def chi2_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of 'samples were drawn from probs' (Pearson chi-square; sparse cells pooled).

    Any sample in a zero-probability cell returns 0.0 outright.
    """
    v = probs.shape[-1]
    s = samples.reshape(-1).to(torch.long).cpu()
    if s.numel() == 0:
        raise ValueError("no samples")
    if bool((s < 0).any()) or bool((s >= v).any()):
        return 0.0
    obs = torch.bincount(s, minlength=v).numpy().astype(np.float64)
    pr = probs.detach().to(torch.float64).cpu().numpy()
    pr = pr / pr.sum()
    if obs[pr <= 0].sum() > 0:
        return 0.0
    exp = pr * obs.sum()
    keep = exp >= 5
    o = list(obs[keep])
    e = list(exp[keep])
    small_o, small_e = obs[~keep & (pr > 0)].sum(), exp[~keep & (pr > 0)].sum()
    if small_e > 0:
        o.append(small_o)
        e.append(small_e)
    if len(e) < 2:
        return 1.0  # a single possible outcome, and every sample hit it
    return float(chisquare(np.array(o), np.array(e)).pvalue)


def assert_follows(samples: torch.Tensor, probs: torch.Tensor, what: str = "") -> None:
    """Fail unless the samples pass the chi-square test against probs at level P_MIN."""
    pv = chi2_pvalue(samples, probs)
    if pv < P_MIN:
        v = probs.shape[-1]
        freq = torch.bincount(samples.reshape(-1).clamp(0, v - 1).cpu(), minlength=v).double()
        freq = freq / freq.sum()
        raise AssertionError(
            f"{what}: p-value {pv:.3g} < {P_MIN}\n  expected {probs.double().cpu().numpy()}\n"
            f"  observed {freq.numpy()}"
        )


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum()


def cases(v: int = 6, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(p, q) pairs: random ones plus the edge cases every exact rule must survive."""
    g = torch.Generator().manual_seed(seed)
    r = lambda: _norm(torch.rand(v, generator=g, dtype=torch.float64) ** 2 + 0.01)  # noqa: E731
    p_rand, q_rand = r(), r()
    q_hole = q_rand.clone()
    q_hole[:2] = 0  # q is zero where p is not
    p_hole = p_rand.clone()
    p_hole[-2:] = 0  # p is zero where q is not
    half = v // 2
    p_left = _norm(torch.cat([torch.rand(half, generator=g), torch.zeros(v - half)]).double())
    q_right = _norm(torch.cat([torch.zeros(half), torch.rand(v - half, generator=g)]).double())
    one_hot = torch.zeros(v, dtype=torch.float64)
    one_hot[1] = 1.0
    return {
        "random": (p_rand, q_rand),
        "random_peaked": (_norm(p_rand**3), _norm(q_rand**0.5)),
        "q_zero_where_p_not": (p_rand, _norm(q_hole)),
        "p_zero_where_q_not": (_norm(p_hole), q_rand),
        "p_equals_q": (p_rand, p_rand.clone()),
        "disjoint_supports": (p_left, q_right),
        "one_hot_p": (one_hot, q_rand),
        "one_hot_q": (p_rand, one_hot.clone()),
    }


def sample_drafts(q: torch.Tensor, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(n, k) drafts: column j from q (V,) for i.i.d. drafts, or from q[j] for (K, V)."""
    if q.dim() == 1:
        return torch.multinomial(q.float(), n * k, replacement=True, generator=g).reshape(n, k)
    cols = [torch.multinomial(q[j].float(), n, replacement=True, generator=g) for j in range(k)]
    return torch.stack(cols, dim=1)


class Stats:
    """The helpers above, handed to tests as the `stats` fixture (importlib import mode)."""

    P_MIN = P_MIN
    N = N_SAMPLES
    chi2_pvalue = staticmethod(chi2_pvalue)
    assert_follows = staticmethod(assert_follows)
    sample_drafts = staticmethod(sample_drafts)
    cases = staticmethod(cases)


@pytest.fixture(scope="session")
def stats() -> Stats:
    """Chi-square helper, case generator and sample size for the speculative-rule tests."""
    return Stats()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize any test asking for `case_name` over every (p, q) case."""
    if "case_name" in metafunc.fixturenames:
        metafunc.parametrize("case_name", list(cases()))

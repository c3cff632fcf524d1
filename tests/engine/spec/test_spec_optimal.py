"""Acceptance orderings and Khisti et al.'s limits for multi-draft selection."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine.spec import (
    canonical_acceptance,
    is_induced_proposal,
    optimal_acceptance_iid,
    optimal_plan,
    recursive_acceptance,
    spectr_acceptance,
    subset_min_gap,
    truncated_plan,
)
from deploylab.engine.spec.optimal_bound import optimal_acceptance_by_subsets

TOL = 1e-7


def _instances(n: int, seed: int, v_range=(3, 7), conc=(0.3, 1.0, 3.0)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        v = int(torch.randint(v_range[0], v_range[1], (1,), generator=g))
        a = torch.full((v,), conc[i % len(conc)], dtype=torch.float64)
        dirichlet = torch.distributions.Dirichlet(a)
        torch.manual_seed(seed * 1000 + i)
        out.append((dirichlet.sample(), dirichlet.sample()))
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_lp_optimal_ge_truncated_ge_importance_sampling(k: int) -> None:
    for p, q in _instances(12, seed=k):
        opt = optimal_plan(p, q, k).acceptance
        trunc = truncated_plan(p, q, k, 2).acceptance
        imp = canonical_acceptance(p, is_induced_proposal(p[None], q[None], k)[0]).item()
        assert opt >= trunc - TOL >= imp - 2 * TOL, (p, q, opt, trunc, imp)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_optimal_ge_spectr_ge_recursive_rejection(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    for conc in (0.2, 1.0, 5.0):
        for v in (3, 8, 50):
            a = torch.full((v,), conc, dtype=torch.float64)
            gam = torch._standard_gamma(a.expand(400, v).contiguous(), generator=g)
            p = gam / gam.sum(-1, keepdim=True)
            gam = torch._standard_gamma(a.expand(400, v).contiguous(), generator=g)
            q = gam / gam.sum(-1, keepdim=True)
            opt = optimal_acceptance_iid(p, q, k)
            st = spectr_acceptance(p, q, k)
            rec = recursive_acceptance(p, q, k)
            assert bool((opt >= st - TOL).all())
            assert bool((st >= rec - TOL).all()), (st - rec).min()


@pytest.mark.parametrize("k", [2, 3])
def test_closed_form_optimum_matches_the_lp_and_subset_enumeration(k: int) -> None:
    for p, q in _instances(10, seed=10 + k):
        lp = optimal_plan(p, q, k).acceptance
        closed = optimal_acceptance_iid(p, q, k).item()
        by_subsets = optimal_acceptance_by_subsets(p, q, k)
        assert lp == pytest.approx(closed, abs=TOL)
        assert closed == pytest.approx(by_subsets, abs=1e-12)


def test_multiset_lp_equals_ordered_tuple_lp_for_identical_drafters() -> None:
    """Optimising over multisets loses nothing against the full ordered-tuple LP."""
    for p, q in _instances(5, seed=20):
        multiset = optimal_plan(p, q, 2).acceptance
        ordered = optimal_plan(p, q.expand(2, -1).clone(), 2).acceptance
        assert multiset == pytest.approx(ordered, abs=TOL)


def test_two_identical_drafts_reach_acceptance_one_exactly_when_khisti_condition_holds() -> None:
    """K = 2: P*(acc) = 1 iff sum_S p >= (sum_S q)^2 for every token set S (subsets enumerated)."""
    seen = {True: 0, False: 0}
    g = torch.Generator().manual_seed(30)
    for i in range(60):
        v = 3 + i % 3
        q = torch.rand(v, generator=g, dtype=torch.float64) + 0.05
        q /= q.sum()
        # p = q always satisfies the condition; moving p toward a random distribution breaks
        # it at some point, so mixing covers both outcomes.
        other = torch.rand(v, generator=g, dtype=torch.float64) ** 3
        lam = float(torch.rand(1, generator=g))
        p = lam * other / other.sum() + (1 - lam) * q
        gap = subset_min_gap(p, q, 2)
        if abs(gap) < 1e-6:
            continue  # too close to the boundary to classify in floating point
        condition = gap >= 0
        acc = optimal_plan(p, q, 2).acceptance
        assert (acc >= 1 - 1e-7) == condition, (p, q, gap, acc)
        seen[condition] += 1
    assert seen[True] >= 10 and seen[False] >= 10, seen


def test_optimal_acceptance_edge_cases() -> None:
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    assert optimal_acceptance_iid(p, p, 3).item() == pytest.approx(1.0)
    disjoint = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert optimal_acceptance_iid(p, disjoint, 4).item() == pytest.approx(0.0)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    single = torch.minimum(p, q).sum().item()
    assert optimal_acceptance_iid(p, q, 1).item() == pytest.approx(single)
    more = [optimal_acceptance_iid(p, q, k).item() for k in (1, 2, 4, 8)]
    assert more == sorted(more)  # more drafts never hurt

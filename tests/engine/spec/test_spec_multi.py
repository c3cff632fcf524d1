"""Multi-draft rules: recursive rejection, SpecTr K-SEQ, canonical IS / LP-optimal / truncated LP.

Every rule claims exactness, so the emitted token must follow p for random and edge-case
(p, q), with K i.i.d. drafts and (where supported) one drafter per draft.
"""

from __future__ import annotations

import math

import pytest
import torch

from deploylab.engine.spec import (
    canonical_acceptance,
    canonical_verify,
    importance_sampling_verify,
    is_induced_proposal,
    is_select_probs,
    lp_verify,
    optimal_plan,
    recursive_acceptance,
    recursive_rejection,
    spectr_acceptance,
    spectr_kseq,
    spectr_rho,
    truncated_plan,
)
from deploylab.engine.spec.multi_common import per_draft
from deploylab.errors import InvalidRequestError

N_PLAN = 200_000


def _batch(stats, p, q, k, seed):
    g = torch.Generator().manual_seed(seed)
    drafts = stats.sample_drafts(q, stats.N, k, g)
    qb = q.expand(stats.N, -1) if q.dim() == 1 else q.expand(stats.N, -1, -1)
    return p.expand(stats.N, -1), qb, drafts, g


def _check(stats, choice, p, drafts, expect_acc: float | None, what: str) -> None:
    stats.assert_follows(choice.token, p, what)
    kept = choice.accepted_index >= 0
    idx = choice.accepted_index.clamp_min(0).unsqueeze(1)
    assert bool((drafts.gather(1, idx).squeeze(1)[kept] == choice.token[kept]).all())
    if expect_acc is not None:
        rate = kept.double().mean().item()
        sd = math.sqrt(max(expect_acc * (1 - expect_acc), 1e-12) / kept.numel())
        assert abs(rate - expect_acc) < 5 * sd + 1e-9, (what, rate, expect_acc)


@pytest.mark.parametrize("k", [2, 4])
def test_recursive_rejection_is_exact(stats, case_name: str, k: int) -> None:
    p, q = stats.cases()[case_name]
    pb, qb, d, g = _batch(stats, p, q, k, 10 + k)
    acc = recursive_acceptance(p, q, k).item()
    _check(stats, recursive_rejection(pb, qb, d, g), p, d, acc, f"recursive {case_name} K={k}")


@pytest.mark.parametrize("k", [2, 4])
def test_spectr_kseq_is_exact(stats, case_name: str, k: int) -> None:
    p, q = stats.cases()[case_name]
    pb, qb, d, g = _batch(stats, p, q, k, 20 + k)
    acc = spectr_acceptance(p, q, k).item()
    rho = spectr_rho(p[None], q[None], k).expand(stats.N)  # one instance: solve rho once
    choice = spectr_kseq(pb, qb, d, g, rho=rho)
    _check(stats, choice, p, d, acc, f"spectr {case_name} K={k}")


def test_spectr_kseq_end_to_end(stats) -> None:
    """The one-call path (rho solved per row) on a smaller batch, and rho's defining bound."""
    p, q = stats.cases()["random_peaked"]
    g = torch.Generator().manual_seed(25)
    n = 20_000
    d = stats.sample_drafts(q, n, 3, g)
    choice = spectr_kseq(p.expand(n, -1), q.expand(n, -1), d, g)
    _check(stats, choice, p, d, spectr_acceptance(p, q, 3).item(), "spectr end to end")
    rho = spectr_rho(p[None], q[None], 3)
    beta = torch.minimum(q, p / rho).sum()
    assert 1 <= rho.item() <= 3
    assert (1 - (1 - beta) ** 3) / beta <= rho + 1e-12


@pytest.mark.parametrize("k", [2, 3])
def test_importance_sampling_is_exact(stats, case_name: str, k: int) -> None:
    p, q = stats.cases()[case_name]
    pb, qb, d, g = _batch(stats, p, q, k, 30 + k)
    p_ind = is_induced_proposal(p[None], q[None], k)[0]  # one instance: compute p_I once
    choice = canonical_verify(
        pb, d, is_select_probs(pb, per_draft(pb, qb, k), d), p_ind.expand_as(pb), g
    )
    _check(stats, choice, p, d, canonical_acceptance(p, p_ind).item(), f"IS {case_name} K={k}")


def test_importance_sampling_verify_end_to_end(stats) -> None:
    """The public one-call path (p_I computed per row) on a smaller batch."""
    p, q = stats.cases()["random"]
    g = torch.Generator().manual_seed(35)
    n = 20_000
    d = stats.sample_drafts(q, n, 3, g)
    choice = importance_sampling_verify(p.expand(n, -1), q.expand(n, -1), d, g)
    acc = canonical_acceptance(p, is_induced_proposal(p[None], q[None], 3)[0]).item()
    _check(stats, choice, p, d, acc, "IS end to end")


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("truncate", [None, 2])
def test_lp_selection_is_exact(stats, case_name: str, k: int, truncate: int | None) -> None:
    p, q = stats.cases()[case_name]
    plan = optimal_plan(p, q, k) if truncate is None else truncated_plan(p, q, k, truncate)
    pb, _, d, g = _batch(stats, p, q, k, 40 + k)
    choice = canonical_verify(pb, d, plan.select_probs(d), plan.p_induced.expand_as(pb), g)
    _check(stats, choice, p, d, plan.acceptance, f"LP(s={truncate}) {case_name} K={k}")


def _drafters(stats) -> torch.Tensor:
    """Three different drafters (K = 3), one with a hole where p has mass."""
    c = stats.cases(seed=3)
    return torch.stack([c["random"][1], c["q_zero_where_p_not"][1], c["random_peaked"][1]])


@pytest.mark.parametrize("rule", ["recursive", "is", "lp", "lp_truncated"])
def test_distinct_drafters_are_exact(stats, rule: str) -> None:
    p = stats.cases(seed=3)["random"][0]
    qk = _drafters(stats)
    pb, qb, d, g = _batch(stats, p, qk, 3, 50)
    if rule == "recursive":
        choice, acc = recursive_rejection(pb, qb, d, g), recursive_acceptance(p, qk, 3).item()
    elif rule == "is":
        p_ind = is_induced_proposal(p[None], qk[None], 3)[0]
        choice = canonical_verify(pb, d, is_select_probs(pb, qb, d), p_ind.expand_as(pb), g)
        acc = canonical_acceptance(p, p_ind).item()
    else:
        plan = optimal_plan(p, qk, 3) if rule == "lp" else truncated_plan(p, qk, 3, 3)
        choice = canonical_verify(pb, d, plan.select_probs(d), plan.p_induced.expand_as(pb), g)
        acc = plan.acceptance
    _check(stats, choice, p, d, acc, f"{rule} distinct drafters")


def test_lp_verify_solves_one_lp_per_row(stats) -> None:
    """The batched convenience path (one LP per row) agrees with per-instance plans."""
    c = stats.cases()
    names = ["random", "one_hot_p", "p_equals_q"]
    p = torch.stack([c[n][0] for n in names])
    q = torch.stack([c[n][1] for n in names])
    g = torch.Generator().manual_seed(60)
    d = torch.stack([stats.sample_drafts(q[i], 1, 2, g)[0] for i in range(3)])
    choice = lp_verify(p, q, d, g)
    assert choice.token[1].item() == 1  # one-hot p can only emit its token
    assert choice.accepted_index[2].item() >= 0  # p == q: the LP keeps a draft surely


def test_single_draft_rules_agree_at_k_equal_one(stats) -> None:
    p, q = stats.cases()["random"]
    base = torch.minimum(p, q).sum().item()
    assert recursive_acceptance(p, q, 1).item() == pytest.approx(base)
    assert spectr_acceptance(p, q, 1).item() == pytest.approx(base)
    assert optimal_plan(p, q, 1).acceptance == pytest.approx(base)
    p_is = is_induced_proposal(p[None], q[None], 1)[0]
    assert torch.allclose(p_is, q)  # selecting among one draft: p_I = q


def test_spectr_refuses_distinct_drafters(stats) -> None:
    p = stats.cases()["random"][0]
    qk = _drafters(stats)
    with pytest.raises(InvalidRequestError, match="i.i.d."):
        spectr_kseq(p[None], qk[None], torch.zeros(1, 3, dtype=torch.long))


def test_enumeration_limit_is_a_clear_error() -> None:
    p = torch.full((1, 64), 1 / 64, dtype=torch.float64)
    qk = p.unsqueeze(1).expand(1, 4, 64)
    with pytest.raises(InvalidRequestError, match="too large"):
        is_induced_proposal(p, qk.contiguous(), 4)

"""Speculative cascades: pi is a distribution, sampling follows pi, deferral behaves as stated."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine.spec import (
    DeferralRule,
    cascade_acceptance,
    cascade_target,
    cascade_verify,
    speculative_sampling,
)
from deploylab.errors import InvalidRequestError

RULES = [r.value for r in DeferralRule]


def _random_pairs(n: int, v: int, seed: int, conc: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    a = torch.full((n, v), conc, dtype=torch.float64)
    p, q = torch._standard_gamma(a, generator=g), torch._standard_gamma(a, generator=g)
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


@pytest.mark.parametrize("rule", RULES)
def test_pi_is_a_valid_distribution(stats, rule: str) -> None:
    p, q = _random_pairs(500, 6, seed=1)
    edge = list(stats.cases().values())  # one-hot, disjoint, p == q, holes
    p = torch.cat([p, torch.stack([e[0] for e in edge])])
    q = torch.cat([q, torch.stack([e[1] for e in edge])])
    for alpha in (-2.0, 0.0, 0.1, 0.3, 0.7, 1.0):
        pi = cascade_target(p, q, rule, alpha)
        assert bool((pi >= 0).all())
        assert torch.allclose(pi.sum(-1), torch.ones(p.shape[0], dtype=p.dtype))


@pytest.mark.parametrize("rule", RULES)
def test_cascade_sampling_follows_pi(stats, rule: str) -> None:
    p, q = stats.cases()["random_peaked"]
    alpha = 0.3
    pi = cascade_target(p, q, rule, alpha)
    g = torch.Generator().manual_seed(2)
    n = stats.N
    drafts = stats.sample_drafts(q, n, 2, g)
    res = cascade_verify(p.expand(n, 3, -1), q.expand(n, 2, -1), drafts, rule, alpha, g)
    stats.assert_follows(res.tokens[:, 0], pi, f"{rule} position 0")
    stats.assert_follows(res.tokens[res.num_accepted >= 1, 1], pi, f"{rule} position 1")
    stats.assert_follows(res.tokens[res.num_accepted >= 2, 2], p, f"{rule} bonus")


@pytest.mark.parametrize("rule", RULES)
def test_deferral_off_is_plain_speculative_sampling(stats, rule: str) -> None:
    """For alpha < -1 no rule ever uses the draft: pi = p and the run is token-for-token SS."""
    p, q = stats.cases()["random"]
    n = 5000
    drafts = stats.sample_drafts(q, n, 3, torch.Generator().manual_seed(3))
    pp, qq = p.expand(n, 4, -1), q.expand(n, 3, -1)
    assert torch.equal(cascade_target(p, q, rule, -1.01), p)
    a = cascade_verify(pp, qq, drafts, rule, -1.01, torch.Generator().manual_seed(4))
    b = speculative_sampling(pp, qq, drafts, torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens, b.tokens)


def test_chow_at_alpha_zero_is_plain_speculative_sampling(stats) -> None:
    """Chow uses q only when max q >= 1: never, unless the draft is one-hot."""
    p, q = _random_pairs(2000, 6, seed=5)
    assert torch.equal(cascade_target(p, q, "chow", 0.0), p)
    n = q.shape[0]
    drafts = torch.multinomial(q.float(), 1, generator=torch.Generator().manual_seed(6))
    pp = torch.stack([p, p], dim=1)
    a = cascade_verify(pp, q[:, None], drafts, "chow", 0.0, torch.Generator().manual_seed(7))
    b = speculative_sampling(pp, q[:, None], drafts, torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and n == 2000


@pytest.mark.parametrize("rule", ["diff", "opt", "v1", "v2", "v3"])
def test_alpha_zero_still_defers_for_rules_other_than_chow(rule: str) -> None:
    """Documented behaviour: with the paper's inequalities, alpha = 0 is not plain SS here."""
    p = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.85, 0.05], dtype=torch.float64)
    assert not torch.allclose(cascade_target(p, q, rule, 0.0), p)


@pytest.mark.parametrize("rule", ["chow", "diff", "opt"])
def test_sequence_level_acceptance_is_non_decreasing_in_alpha(rule: str) -> None:
    p, q = _random_pairs(3000, 8, seed=8)
    prev = cascade_acceptance(p, q, rule, -1.5)
    assert torch.allclose(prev, torch.minimum(p, q).sum(-1))
    for alpha in torch.linspace(-1.0, 1.0, 41).tolist():
        cur = cascade_acceptance(p, q, rule, alpha)
        assert bool((cur >= prev - 1e-12).all()), (rule, alpha)
        prev = cur


@pytest.mark.parametrize("rule", ["v1", "v2", "v3"])
def test_token_level_kept_mass_grows_with_alpha_and_bounds_acceptance(rule: str) -> None:
    """q(A) (drafts kept by the rule outright) grows with alpha and never exceeds acceptance."""
    p, q = _random_pairs(3000, 8, seed=9)
    prev = torch.zeros(p.shape[0], dtype=p.dtype)
    for alpha in torch.linspace(0.0, 1.0, 41).tolist():
        pi = cascade_target(p, q, rule, alpha)
        kept = torch.where(pi >= q - 1e-15, q, torch.zeros_like(q)).sum(-1)
        in_a = _accepted_set(p, q, rule, alpha)
        q_a = torch.where(in_a, q, torch.zeros_like(q)).sum(-1)
        assert bool((q_a >= prev - 1e-12).all())
        assert bool((cascade_acceptance(p, q, rule, alpha) >= q_a - 1e-12).all())
        assert bool((kept >= q_a - 1e-12).all())
        prev = q_a


def _accepted_set(p, q, rule, alpha):
    pmax = p.amax(-1, keepdim=True)
    if rule == "v1":
        return q >= pmax - alpha
    if rule == "v2":
        return p >= pmax - alpha
    return p >= (1 - alpha) * pmax


def test_token_level_acceptance_can_drop_when_alpha_grows() -> None:
    """Documented counterexample: adding p's mode (rarely drafted) to A rescales the rest of pi
    and lowers sum min(q, pi) below plain speculative sampling."""
    p = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.5, 0.4], dtype=torch.float64)
    plain = cascade_acceptance(p, q, "v3", -1.5).item()
    at_zero = cascade_acceptance(p, q, "v3", 0.0).item()
    assert plain == pytest.approx(0.3) and at_zero == pytest.approx(0.28)


def test_deferral_reads_temperature_one_probabilities() -> None:
    """The decision uses p_defer / q_defer, not the (sharpened) sampling distributions."""
    q_t1 = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q_sharp = torch.softmax(torch.log(q_t1) / 0.3, -1)  # temperature 0.3: max q ~ 0.9
    p = torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64)
    assert torch.equal(cascade_target(p, q_sharp, "chow", 0.2), q_sharp)
    assert torch.equal(cascade_target(p, q_sharp, "chow", 0.2, p, q_t1), p)


def test_unknown_rule_is_a_clear_error() -> None:
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(InvalidRequestError, match="unknown deferral rule"):
        cascade_target(p, p, "fastest", 0.1)

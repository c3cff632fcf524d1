"""Single-draft speculative sampling and greedy verification: exactness, acceptance, errors."""

from __future__ import annotations

import math

import pytest
import torch

from deploylab.engine.spec import acceptance_probability, greedy_verify, speculative_sampling
from deploylab.engine.spec.sampling import residual
from deploylab.engine.spec.single import expected_tokens_per_pass
from deploylab.errors import InvalidRequestError


def _chain(stats, p: torch.Tensor, q: torch.Tensor, gamma: int, g: torch.Generator):
    """Batch of stats.N chains whose every position uses (p, q); drafts sampled from q."""
    n, v = stats.N, p.shape[0]
    drafts = stats.sample_drafts(q, n, gamma, g)
    return p.expand(n, gamma + 1, v), q.expand(n, gamma, v), drafts


def test_speculative_sampling_emits_target_distribution(stats, case_name: str) -> None:
    p, q = stats.cases()[case_name]
    g = torch.Generator().manual_seed(1)
    res = speculative_sampling(*_chain(stats, p, q, 2, g), g)
    # Every emitted position j (present when j drafts were kept) follows p.
    for j in range(3):
        rows = res.num_accepted >= j
        if j > 0 and not bool(rows.any()):
            assert acceptance_probability(p, q).item() == 0.0  # nothing is ever kept
            continue
        stats.assert_follows(res.tokens[rows, j], p, f"{case_name} position {j}")
    assert bool((res.tokens[torch.arange(stats.N), res.num_accepted] >= 0).all())


def test_speculative_sampling_follows_position_specific_targets(stats) -> None:
    """Different (p_i, q_i) per position in one chain: random, disjoint, one-hot p."""
    c = stats.cases()
    names = ["random", "one_hot_p", "disjoint_supports"]
    p = torch.stack([c[n][0] for n in names] + [c["random_peaked"][0]])
    q = torch.stack([c[n][1] for n in names])
    g = torch.Generator().manual_seed(2)
    n = stats.N
    drafts = torch.cat([stats.sample_drafts(q[i], n, 1, g) for i in range(3)], dim=1)
    res = speculative_sampling(p.expand(n, 4, -1), q.expand(n, 3, -1), drafts, g)
    stats.assert_follows(res.tokens[:, 0], p[0], "position 0")
    stats.assert_follows(res.tokens[res.num_accepted >= 1, 1], p[1], "position 1")
    stats.assert_follows(res.tokens[res.num_accepted >= 2, 2], p[2], "position 2")
    assert not bool((res.num_accepted >= 3).any())  # disjoint supports never keep a draft


@pytest.mark.parametrize("name", ["random", "random_peaked", "q_zero_where_p_not", "one_hot_q"])
def test_acceptance_rate_equals_sum_of_min(stats, name: str) -> None:
    p, q = stats.cases()[name]
    g = torch.Generator().manual_seed(3)
    res = speculative_sampling(*_chain(stats, p, q, 1, g), g)
    rate = res.num_accepted.double().mean().item()
    expect = torch.minimum(p, q).sum().item()
    assert acceptance_probability(p, q).item() == pytest.approx(expect)
    assert expect == pytest.approx(1 - 0.5 * (p - q).abs().sum().item())
    sd = math.sqrt(max(expect * (1 - expect), 1e-12) / stats.N)
    assert abs(rate - expect) < 5 * sd + 1e-12


def test_acceptance_identity_edge_values(stats) -> None:
    c = stats.cases()
    assert acceptance_probability(*c["p_equals_q"]).item() == pytest.approx(1.0)
    assert acceptance_probability(*c["disjoint_supports"]).item() == 0.0


def test_expected_tokens_per_pass_matches_simulation(stats) -> None:
    p, q = stats.cases()["random"]
    g = torch.Generator().manual_seed(4)
    res = speculative_sampling(*_chain(stats, p, q, 4, g), g)
    alpha = acceptance_probability(p, q)
    expect = expected_tokens_per_pass(alpha, 4).item()
    assert expect == pytest.approx((1 - alpha.item() ** 5) / (1 - alpha.item()))
    assert res.num_emitted.double().mean().item() == pytest.approx(expect, abs=0.02)


def test_greedy_keeps_exactly_the_argmax_path() -> None:
    rows = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]
    p = torch.tensor([rows]).expand(3, 4, 3)
    drafts = torch.tensor([[1, 0, 2], [1, 1, 2], [0, 0, 2]])
    res = greedy_verify(p, drafts)
    assert res.num_accepted.tolist() == [3, 1, 0]
    assert res.tokens.tolist() == [[1, 0, 2, 2], [1, 0, -1, -1], [1, -1, -1, -1]]


# --- negative controls: the chi-square helper must reject deliberately wrong rules ----------


def _first_token(p, q, drafts, g, mistake: str) -> torch.Tensor:
    """First emitted token of single-draft SS, optionally with one classic mistake."""
    x = drafts[:, 0]
    px, qx = p[x], q[x]
    u = torch.rand(x.shape, generator=g, dtype=torch.float64)
    keep = u < qx / px.clamp_min(1e-300) if mistake == "inverted_ratio" else u * qx < px
    if mistake == "correction_from_p":
        fix = p
    elif mistake == "residual_q_minus_p":
        fix = residual(q, p)
    elif mistake == "residual_without_clamp":
        fix = (p - q).abs()  # |p - q| instead of max(0, p - q)
    else:
        fix = residual(p, q)
    fresh = torch.multinomial(fix.float().expand(x.shape[0], -1), 1, generator=g).squeeze(1)
    return torch.where(keep, x, fresh)


@pytest.mark.parametrize(
    "mistake",
    ["correction_from_p", "inverted_ratio", "residual_q_minus_p", "residual_without_clamp"],
)
def test_chi_square_rejects_wrong_rules(stats, mistake: str) -> None:
    p, q = stats.cases()["random"]
    g = torch.Generator().manual_seed(5)
    drafts = stats.sample_drafts(q, stats.N, 1, g)
    assert stats.chi2_pvalue(_first_token(p, q, drafts, g, mistake), p) < stats.P_MIN
    assert stats.chi2_pvalue(_first_token(p, q, drafts, g, "none"), p) > stats.P_MIN


def test_chi_square_rejects_impossible_outcomes_and_small_shifts(stats) -> None:
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    assert stats.chi2_pvalue(torch.tensor([0, 1, 2] * 1000), p) == 0.0
    g = torch.Generator().manual_seed(6)
    shifted = torch.tensor([0.51, 0.49, 0.0])  # one point of mass moved
    s = torch.multinomial(shifted, stats.N, replacement=True, generator=g)
    assert stats.chi2_pvalue(s, p) < stats.P_MIN


# --- input errors --------------------------------------------------------------------------


def test_logits_instead_of_probabilities_are_rejected() -> None:
    logits = torch.randn(2, 3, 5)
    q = torch.softmax(torch.randn(2, 2, 5), -1)
    with pytest.raises(InvalidRequestError, match="sum to 1|negative"):
        speculative_sampling(logits, q, torch.zeros(2, 2, dtype=torch.long))


def test_shape_and_token_errors_say_what_to_pass() -> None:
    p = torch.softmax(torch.randn(2, 3, 5), -1)
    q = torch.softmax(torch.randn(2, 3, 5), -1)
    with pytest.raises(InvalidRequestError, match=r"gamma \+ 1"):
        speculative_sampling(p, q, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        speculative_sampling(p, q[:, :2], torch.full((2, 2), 7))
    with pytest.raises(InvalidRequestError, match="integer"):
        speculative_sampling(p, q[:, :2], torch.zeros(2, 2))


@pytest.mark.gpu
def test_speculative_sampling_on_cuda_is_exact(stats) -> None:
    p, q = stats.cases()["random"]
    dev = torch.device("cuda")
    pp, qq, drafts = _chain(stats, p, q, 2, torch.Generator().manual_seed(7))
    g = torch.Generator(device=dev).manual_seed(7)
    res = speculative_sampling(pp.to(dev), qq.to(dev), drafts.to(dev), g)
    assert res.tokens.device.type == "cuda"
    stats.assert_follows(res.tokens[:, 0], p, "cuda position 0")


@pytest.mark.parametrize("seed", range(6))
def test_point_mass_sampling_equals_speculative_sampling_with_one_hot_drafts(seed: int) -> None:
    """The engine's rule for deterministic drafts draws the same numbers as
    `speculative_sampling` with one-hot q, so it emits the same tokens, draw for draw,
    including targets that give a draft zero mass and fully accepted chains."""
    from deploylab.engine.spec.single import point_mass_sampling

    gen = torch.Generator().manual_seed(seed)
    b, gamma, v = 64, 4, 7
    p = torch.rand(b, gamma + 1, v, generator=gen) ** 3
    p[: b // 4, :, 0] = 0.0  # some drafts impossible under p
    p[b // 4 : b // 2] = 0.0
    p[b // 4 : b // 2, :, 1] = 1.0  # a point-mass target: every matching draft kept
    p = p / p.sum(-1, keepdim=True)
    drafts = torch.randint(0, 3, (b, gamma), generator=gen)
    drafts[b // 4 : b // 2] = 1
    q = torch.nn.functional.one_hot(drafts, v).to(p.dtype)
    want = speculative_sampling(p, q, drafts, torch.Generator().manual_seed(100 + seed))
    got = point_mass_sampling(p, drafts, torch.Generator().manual_seed(100 + seed))
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.num_accepted, want.num_accepted)
    assert bool((got.num_accepted[b // 4 : b // 2] == gamma).all())
    assert bool((got.num_accepted < gamma).any())

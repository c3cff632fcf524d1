"""The adaptive k policy's law (not the stopwatch): optimal against brute force, k never
grows with the batch for fixed costs, k = 0 when the expected gain does not pay; the cost
model's fit; and the policy inside the engine (greedy output unchanged, no leaks)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from tests.engine.conftest import ModelParts
from tests.engine.test_spec_decode import greedy_params, looping_prompts, run

from deploylab.engine.spec_decode.cost import CostModel, prior_model
from deploylab.engine.spec_decode.policy import (
    AcceptanceTracker,
    choose_ks,
    expected_accepted,
    step_rate,
)

ADAPTIVE = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1}


def random_instance(rng: random.Random, n: int) -> tuple[list[float], list[int], tuple]:
    alphas = [rng.random() for _ in range(n)]
    limits = [rng.randrange(0, 5) for _ in range(n)]
    costs = (rng.uniform(0.01, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2))
    return alphas, limits, costs


@pytest.mark.parametrize("seed", range(40))
def test_choice_is_optimal_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    alphas, limits, (a, b, c) = random_instance(rng, rng.randrange(1, 4))
    extra = rng.randrange(0, 5)  # decoding sequences without candidates
    num = len(alphas) + extra
    ks = choose_ks(alphas, limits, num, a, b, c)
    assert all(0 <= k <= n for k, n in zip(ks, limits, strict=True))
    best = max(
        step_rate(alphas, list(combo), num, a, b, c)
        for combo in itertools.product(*(range(n + 1) for n in limits))
    )
    assert step_rate(alphas, ks, num, a, b, c) == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("seed", range(30))
def test_k_never_grows_with_the_batch(seed: int) -> None:
    rng = random.Random(100 + seed)
    alpha = rng.random()
    a, b, c = rng.uniform(0.01, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2)
    previous = None
    for batch in (1, 2, 4, 8, 16, 32, 64, 128):
        ks = choose_ks([alpha] * batch, [8] * batch, batch, a, b, c)
        assert len(set(ks)) == 1  # identical sequences get the same k
        if previous is not None:
            assert ks[0] <= previous
        previous = ks[0]
    # Mixed sequences: each sequence's k is non-increasing as more sequences join.
    alphas = [rng.random() for _ in range(6)]
    before = choose_ks(alphas, [6] * 6, 6, a, b, c)
    after = choose_ks(alphas + [rng.random() for _ in range(20)], [6] * 26, 26, a, b, c)
    assert all(x >= y for x, y in zip(before, after[:6], strict=True))


def test_k_is_zero_when_the_gain_does_not_pay() -> None:
    # One sequence, step cost 1 + 0.5 per token: a draft accepted with prob 0.3 adds
    # 0.3 expected tokens for 0.5 s more on a 1.5 s step (rate 1/1.5 -> 1.3/2.0): no.
    assert choose_ks([0.3], [4], 1, 1.0, 0.5, 0.0) == [0]
    assert 1.3 / 2.0 < 1 / 1.5
    # Free drafts with any acceptance: take them all; certain acceptance pays at any batch.
    assert choose_ks([0.3, 0.01], [4, 3], 2, 1.0, 0.0, 0.0) == [4, 3]
    assert choose_ks([1.0] * 64, [4] * 64, 64, 1.0, 0.1, 0.0) == [4] * 64
    # Never-accepted drafts are never worth anything.
    assert choose_ks([0.0, 0.9], [4, 4], 2, 1.0, 0.01, 0.0)[0] == 0
    # A large batch on a cost that grows with tokens (the CPU case) turns chat-like drafts
    # off, where a single sequence still drafts.
    assert choose_ks([0.4], [4], 1, 0.07, 0.004, 0.01)[0] > 0
    assert choose_ks([0.4] * 32, [4] * 32, 32, 0.07, 0.004, 0.01) == [0] * 32


def test_expected_accepted_is_the_geometric_sum() -> None:
    assert expected_accepted(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_accepted(0.7, 0) == 0


def test_acceptance_tracker_per_sequence_with_shrinkage() -> None:
    t = AcceptanceTracker(prior=0.5, prior_weight=2.0)
    assert t.rate(("new", 0)) == pytest.approx(0.5)
    for _ in range(20):
        t.record(("good", 0), drafted=4, accepted=4)  # never rejected
        t.record(("bad", 0), drafted=4, accepted=0)
    assert t.rate(("good", 0)) > 0.9 > 0.1 > t.rate(("bad", 0))
    assert 0.1 < t.rate(("new", 0)) < 0.9  # the engine-wide rate
    t.forget_except({("good", 0)})
    assert set(t.counts) == {("good", 0)}


def test_cost_model_fits_and_follows_the_steps() -> None:
    truth = [(n, m, 0.05 + 0.002 * n + 0.01 * m) for n, m in [(1, 0), (8, 0), (5, 1), (40, 8)]]
    model = CostModel(truth)
    assert model.coefficients == pytest.approx((0.05, 0.002, 0.01), rel=1e-6)
    for _ in range(200):  # the machine got twice as slow per token
        for n, m in [(8, 0), (40, 8), (20, 2)]:
            model.observe(n, m, 0.05 + 0.004 * n + 0.01 * m)
    assert 0.0035 < model.coefficients[1] < 0.005  # most of the way from 0.002 to 0.004
    with pytest.raises(ValueError, match="a > 0"):
        CostModel.from_coefficients(0.0, 1.0)


def test_single_batch_calibration_prices_the_verify_pass() -> None:
    """With max_num_seqs 1 the start-up passes are one plain step and one k-draft verify
    step: the prior must predict both, so a verify pass that costs more than its drafts
    save turns drafting off (it was taken as free: the head ran at 0.70x on int4)."""
    obs = [(1, 0, 0.0117), (5, 1, 0.0205)]  # measured on this CPU, int4, k = 4
    model = prior_model(obs)
    assert model.cost(1, 0) == pytest.approx(0.0117)
    assert model.cost(5, 1) == pytest.approx(0.0205)
    a, b, c = model.coefficients
    assert choose_ks([0.1], [4], 1, a, b, c) == [0]  # 1.1 tokens for 1.2x the time or more
    assert choose_ks([0.9], [4], 1, a, b, c) == [4]  # prompt lookup on a quoting answer
    noisy = prior_model([(1, 0, 0.012), (5, 1, 0.011)])  # a verify pass timed faster
    assert noisy.coefficients[1] == pytest.approx(0.0, abs=1e-12)
    assert noisy.cost(1, 0) == pytest.approx(0.012)
    three = [(1, 0, 0.06), (8, 0, 0.07), (5, 1, 0.08), (40, 8, 0.2)]
    assert prior_model(three).coefficients == CostModel(three).coefficients


def test_engine_with_adaptive_policy_keeps_greedy_output(tiny: ModelParts) -> None:
    """Calibrated at start-up on the real runner (empty cache, nothing leaks), the adaptive
    engine's greedy output equals the plain engine's, chunked prefill included."""
    prompts = looping_prompts(10, seed=5)
    params = greedy_params(len(prompts))
    settings = {"max_num_batched_tokens": 32, "max_num_seqs": 8}
    expected = run(tiny.engine(**settings), prompts, params)
    engine = tiny.engine(speculative_config=ADAPTIVE, **settings)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.spec.policy is not None  # type: ignore[union-attr]
    got = run(engine, prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.spec.policy.cost.num_observations > 0  # type: ignore[union-attr]


def test_engine_policy_follows_its_cost_model(tiny: ModelParts) -> None:
    """Drafts that cost nothing are always verified; drafts that cost far more than a step
    are never proposed, and prompt lookup is not even run (the same requests, the same
    output)."""
    prompts = looping_prompts(4, seed=6)
    params = greedy_params(len(prompts), spec_off_every=99)
    outputs = []
    drafted = []
    lookups = []
    for coeffs in [(1.0, 0.0, 0.0), (1e-3, 10.0, 10.0)]:
        engine = tiny.engine(speculative_config=ADAPTIVE)
        spec = engine.spec
        assert spec is not None and spec.policy is not None
        spec.policy.cost = CostModel.from_coefficients(*coeffs)
        spec.policy.cost.observe = lambda *_: None  # type: ignore[method-assign]
        calls: list[int] = []

        def counted(seqs: Any, ks: Any, calls: list = calls, propose: Any = spec.proposer.propose):
            calls.append(len(seqs))
            return propose(seqs, ks)

        spec.proposer.propose = counted  # type: ignore[method-assign]
        outputs.append([o.token_ids for o in run(engine, prompts, params)])
        drafted.append(spec.stats.num_draft_tokens)
        lookups.append(len(calls))
    assert outputs[0] == outputs[1]
    assert drafted[0] > 0 and drafted[1] == 0
    assert lookups[0] > 0 and lookups[1] == 0

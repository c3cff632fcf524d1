"""Length and think-time distributions and Zipf popularity produce what they advertise."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from deploylab.loadtest.distributions import Distribution, zipf_weights

DIST: TypeAdapter = TypeAdapter(Distribution)
N = 20_000


def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_bare_number_is_fixed() -> None:
    dist = DIST.validate_python(64)
    assert dist.dist == "fixed"
    assert set(dist.sample_int(rng(), 100).tolist()) == {64}


def test_uniform_integers_cover_the_range_evenly() -> None:
    dist = DIST.validate_python({"dist": "uniform", "min": 10, "max": 19})
    values = dist.sample_int(rng(), N)
    assert values.min() == 10 and values.max() == 19
    counts = np.bincount(values - 10, minlength=10)
    assert stats.chisquare(counts).pvalue > 0.01


def test_normal_matches_its_parameters() -> None:
    dist = DIST.validate_python({"dist": "normal", "mean": 128, "std": 32})
    values = dist.sample(rng(), N)
    assert stats.kstest(values, "norm", args=(128, 32)).pvalue > 0.01


def test_lognormal_has_the_given_arithmetic_mean() -> None:
    dist = DIST.validate_python({"dist": "lognormal", "mean": 512, "sigma": 0.7})
    values = dist.sample(rng(), N)
    shape, scale = 0.7, np.exp(np.log(512) - 0.7**2 / 2)
    assert stats.kstest(values, "lognorm", args=(shape, 0, scale)).pvalue > 0.01
    assert values.mean() == pytest.approx(512, rel=0.03)


def test_exponential_think_times() -> None:
    dist = DIST.validate_python({"dist": "exponential", "mean": 20})
    values = dist.sample(rng(), N)
    assert stats.kstest(values, "expon", args=(0, 20)).pvalue > 0.01


def test_clipping_and_integer_floor() -> None:
    dist = DIST.validate_python({"dist": "normal", "mean": 5, "std": 50, "min": 2, "max": 30})
    values = dist.sample_int(rng(), N)
    assert values.min() == 2 and values.max() == 30


@pytest.mark.parametrize(
    "bad",
    [
        {"dist": "uniform", "min": 9, "max": 3},
        {"dist": "normal", "mean": 1, "std": -1},
        {"dist": "lognormal", "mean": 0, "sigma": 1},
        {"dist": "pareto", "mean": 1},
        {"dist": "fixed", "value": 3, "typo": 1},
    ],
)
def test_invalid_distributions_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        DIST.validate_python(bad)


def test_zipf_weights_follow_the_power_law() -> None:
    weights = zipf_weights(20, 1.2)
    assert weights.sum() == pytest.approx(1.0)
    ranks = np.arange(1, 21)
    assert np.allclose(weights / weights[0], ranks**-1.2)
    draws = rng().choice(20, size=N, p=weights)
    counts = np.bincount(draws, minlength=20)
    assert stats.chisquare(counts, weights * N).pvalue > 0.01
    assert np.allclose(zipf_weights(5, 0.0), 0.2)

"""Open-loop schedules: Poisson passes a goodness-of-fit test, gamma and constant gaps are
what they claim, ramp-up follows the linear rate, and bounds hold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from deploylab.loadtest.arrivals import closed_loop_starts, send_offsets


def test_poisson_gaps_are_exponential() -> None:
    offsets = send_offsets(50.0, "poisson", count=5000, seed=7)
    gaps = np.diff(offsets)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 50.0)).pvalue > 0.01
    # and the counts per second are Poisson: variance close to the mean
    counts = np.bincount(offsets.astype(int))[:-1]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.25)


def test_poisson_differs_from_constant_by_the_test() -> None:
    gaps = np.diff(send_offsets(50.0, "constant", count=2000))
    assert np.allclose(gaps, 1 / 50.0)
    assert stats.kstest(gaps + 1e-9, "expon", args=(0, 1 / 50.0)).pvalue < 1e-6


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_gaps(shape: float) -> None:
    gaps = np.diff(send_offsets(10.0, "gamma", gamma_shape=shape, count=5000, seed=3))
    assert stats.kstest(gaps, "gamma", args=(shape, 0, 1 / (10.0 * shape))).pvalue > 0.01
    assert gaps.mean() == pytest.approx(0.1, rel=0.06)
    cv2 = gaps.var() / gaps.mean() ** 2
    assert cv2 == pytest.approx(1 / shape, rel=0.15)  # burstiness: CV^2 = 1/shape


def test_duration_and_count_bounds() -> None:
    by_time = send_offsets(20.0, "poisson", duration_s=10.0, seed=1)
    assert by_time[0] == 0.0 and by_time[-1] < 10.0
    assert np.all(np.diff(by_time) >= 0)
    assert len(by_time) == pytest.approx(200, abs=50)
    assert len(send_offsets(20.0, count=37)) == 37
    both = send_offsets(1000.0, duration_s=1.0, count=10)
    assert len(both) == 10
    with pytest.raises(ValueError):
        send_offsets(1.0)


def test_ramp_up_follows_a_linear_rate() -> None:
    rate, ramp = 100.0, 20.0
    offsets = send_offsets(rate, "poisson", ramp_up_s=ramp, duration_s=40.0, seed=5)
    # the cumulative rate L(t) = rate t^2 / (2 ramp) during the ramp, then linear: mapped
    # through it, a Poisson process with that rate becomes one of unit rate
    cumulative = np.where(
        offsets < ramp,
        rate * offsets**2 / (2 * ramp),
        rate * ramp / 2 + rate * (offsets - ramp),
    )
    assert stats.kstest(np.diff(cumulative), "expon").pvalue > 0.01
    during = np.sum(offsets < ramp)
    assert during == pytest.approx(rate * ramp / 2, rel=0.1)  # 1000 expected, sd ~32
    assert np.sum(offsets >= ramp) == pytest.approx(rate * 20.0, rel=0.1)


def test_reproducible_with_the_seed() -> None:
    a = send_offsets(5.0, count=100, seed=42)
    assert np.array_equal(a, send_offsets(5.0, count=100, seed=42))
    assert not np.array_equal(a, send_offsets(5.0, count=100, seed=43))


def test_closed_loop_slots_ramp_evenly() -> None:
    assert closed_loop_starts(4, 0.0) == [0.0] * 4
    assert closed_loop_starts(4, 8.0) == [0.0, 2.0, 4.0, 6.0]

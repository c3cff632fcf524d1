"""Confidence intervals of rates, and runs that stop once their rate is known well enough."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from deploylab.dataloader.measure import measure
from deploylab.dataloader.precision import (
    normal_cdf,
    prob_positive,
    ratio_half_width,
    relative_half_width,
    t975,
)


def test_batch_means_interval() -> None:
    assert relative_half_width([1.0] * 40, 2) == 0.0
    assert relative_half_width([1.0] * 9, 2) is None  # fewer than 5 blocks: unknown
    rng = random.Random(0)
    steady = relative_half_width([rng.uniform(0.9, 1.1) for _ in range(100)], 2)
    noisy = relative_half_width([rng.uniform(0.0, 2.0) for _ in range(100)], 2)
    assert steady is not None and noisy is not None and 0 < steady < noisy
    # Alternating fast/slow steps (one batch per worker in turn) cancel within a block.
    assert relative_half_width([0.0, 2.0] * 50, 2) == 0.0
    assert t975(4) == pytest.approx(2.776) and t975(1000) == pytest.approx(1.96, abs=0.01)


def test_cpu_per_sample_interval_from_timelines() -> None:
    timeline = [(float(t), 0.01 * t) for t in range(11)]  # 10 ms of CPU per second
    marks = [(t + 0.5, 2 * (t + 1)) for t in range(10)]  # 2 samples per second
    assert ratio_half_width(timeline, marks) == pytest.approx(0.0, abs=1e-9)
    assert ratio_half_width(timeline[:3], marks) is None
    jumpy = [(float(t), 0.01 * t + (0.004 if t % 3 == 0 else 0.0)) for t in range(11)]
    wide = ratio_half_width(jumpy, marks)
    assert wide is not None and wide > 0


def test_probability_from_estimate_and_error() -> None:
    assert normal_cdf(0) == pytest.approx(0.5)
    assert prob_positive(2.0, 1.0) == pytest.approx(0.977, abs=1e-3)
    assert prob_positive(-2.0, 1.0) == pytest.approx(0.023, abs=1e-3)
    assert prob_positive(1.0, None) is None


class Steady(Dataset[Any]):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(8)


def test_a_run_stops_once_its_rate_is_precise_enough() -> None:
    loose = measure(Steady(), {"batch_size": 4}, None, 10, 2, precision=0.5, max_seconds=60)
    assert loose.rate_ci is not None and loose.rate_ci <= 0.5
    assert loose.cpu_ci is None or loose.cpu_ci >= 0
    # A precision that can't be reached: the run still ends, at max_seconds, and says how
    # precise it got.
    strict = measure(Steady(), {"batch_size": 4}, None, 10, 2, precision=1e-12, max_seconds=0.3)
    assert strict.rate_ci is not None and strict.rate_ci > 1e-12
    assert strict.steps > loose.steps or strict.elapsed_s >= 0.3

"""Open-loop send schedules: absolute send offsets (seconds from the start), computed up front.

Arrivals are a renewal process of unit rate (exponential gaps: Poisson; equal gaps: constant;
gamma gaps with shape k: burstier than Poisson for k < 1, smoother for k > 1), mapped through
the inverse of the cumulative target rate. With a linear ramp-up from 0 to `rate` over
`ramp_up_s`, the cumulative rate is L(t) = rate t^2 / (2 ramp) before the ramp ends and
rate ramp / 2 + rate (t - ramp) after; for Poisson this time change is exact.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Arrival = Literal["poisson", "constant", "gamma"]
_BATCH = 4096


def _unit_gaps(rng: np.random.Generator, arrival: Arrival, shape: float, n: int) -> np.ndarray:
    if arrival == "poisson":
        return rng.exponential(1.0, n)
    if arrival == "constant":
        return np.ones(n)
    return rng.gamma(shape, 1.0 / shape, n)


def _inverse_cumulative(u: np.ndarray, rate: float, ramp_up_s: float) -> np.ndarray:
    if ramp_up_s <= 0:
        return u / rate
    ramp_area = rate * ramp_up_s / 2
    return np.where(
        u < ramp_area,
        np.sqrt(2 * u * ramp_up_s / rate),
        ramp_up_s + (u - ramp_area) / rate,
    )


def send_offsets(
    rate: float,
    arrival: Arrival = "poisson",
    *,
    gamma_shape: float = 1.0,
    ramp_up_s: float = 0.0,
    duration_s: float | None = None,
    count: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Send offsets in seconds, sorted, the first at 0: all before `duration_s`, at most `count`.

    At least one of `duration_s` and `count` must be given.
    """
    if duration_s is None and count is None:
        raise ValueError("send_offsets needs duration_s or count")
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be positive, got {rate}")
    rng = np.random.default_rng([seed, 0xA1])
    pieces = [np.zeros(1)]
    total = 1
    last = 0.0
    while True:
        gaps = _unit_gaps(rng, arrival, gamma_shape, _BATCH)
        u = last + np.cumsum(gaps)
        last = float(u[-1])
        times = _inverse_cumulative(u, rate, ramp_up_s)
        pieces.append(times)
        total += len(times)
        if duration_s is not None and times[-1] >= duration_s:
            break
        if count is not None and total >= count:
            break
    offsets = np.concatenate(pieces)
    if duration_s is not None:
        offsets = offsets[offsets < duration_s]
    if count is not None:
        offsets = offsets[:count]
    return offsets


def closed_loop_starts(concurrency: int, ramp_up_s: float) -> list[float]:
    """When each of the closed loop's slots starts: spread evenly over the ramp-up."""
    if ramp_up_s <= 0:
        return [0.0] * concurrency
    return [ramp_up_s * i / concurrency for i in range(concurrency)]

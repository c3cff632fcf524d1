"""How precisely a run knows its rate, and how sure a verdict built on such rates is.

A run's step times are correlated (workers hand over batches in turn, prefetch queues fill
and drain), so the confidence interval of the mean step time comes from *batch means*:
consecutive steps grouped in up to 10 blocks of at least one batch per worker, the blocks'
means treated as independent. Stage costs are differences of times per sample, so their
uncertainty follows from the rates' by adding variances.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence

MIN_BLOCKS = 5  # fewest blocks before a confidence interval is trusted
MAX_BLOCKS = 10  # blocks of a long run (each then holds more steps)
_T975 = {
    1: 12.71,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with `dof` degrees of freedom (a 95% interval)."""
    if dof <= 0:
        return math.inf
    known = [d for d in _T975 if d <= dof]
    return _T975[max(known)] if dof <= 30 else 1.96 + 2.4 / dof


def relative_half_width(times: Sequence[float], block: int) -> float | None:
    """Half-width of the 95% interval of the mean of `times`, relative to that mean, by
    batch means: at most `MAX_BLOCKS` blocks of at least `block` steps each, so blocks grow
    with the run and absorb the correlation between nearby steps (None: fewer than
    `MIN_BLOCKS` blocks)."""
    k = min(MAX_BLOCKS, len(times) // max(1, block))
    if k < MIN_BLOCKS:
        return None
    size = len(times) // k
    # Blocks taken from the end: the first steps carry the most start-up noise.
    used = times[len(times) - k * size :]
    means = [sum(used[i * size : (i + 1) * size]) / size for i in range(k)]
    mean = sum(means) / k
    if mean <= 0:
        return None
    var = sum((m - mean) ** 2 for m in means) / (k - 1)
    return t975(k - 1) * math.sqrt(var / k) / mean


def ratio_half_width(
    timeline: Sequence[tuple[float, float]], marks: Sequence[tuple[float, int]]
) -> float | None:
    """Relative half-width of the 95% interval of CPU time per sample: `timeline` holds
    (time, cumulative CPU seconds), `marks` (time, cumulative samples); the run is cut into
    up to `MAX_BLOCKS` blocks at timeline points and the ratio estimated across them."""
    if len(timeline) < MIN_BLOCKS + 1 or not marks:
        return None
    k = min(MAX_BLOCKS, len(timeline) - 1)
    cuts = [timeline[round(i * (len(timeline) - 1) / k)] for i in range(k + 1)]
    times = [t for t, _ in marks]

    def samples_at(t: float) -> int:
        i = bisect.bisect_right(times, t)
        return marks[i - 1][1] if i else 0

    cpu = [b[1] - a[1] for a, b in itertools.pairwise(cuts)]
    got = [samples_at(b[0]) - samples_at(a[0]) for a, b in itertools.pairwise(cuts)]
    if sum(got) <= 0 or sum(cpu) <= 0:
        return None
    ratio = sum(cpu) / sum(got)
    mean_samples = sum(got) / k
    residual = sum((c - ratio * n) ** 2 for c, n in zip(cpu, got, strict=True)) / (k - 1)
    return t975(k - 1) * math.sqrt(residual / k) / mean_samples / ratio


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def combination_se(coefs: Mapping[str, float], se: Mapping[str, float | None]) -> float | None:
    """Standard error of sum(coef * x) for independent x with standard errors `se`."""
    total = 0.0
    for name, c in coefs.items():
        if c == 0:
            continue
        s = se.get(name)
        if s is None:
            return None
        total += (c * s) ** 2
    return math.sqrt(total)


def prob_positive(value: float, se: float | None) -> float | None:
    """P(true value > 0) given an estimate and its standard error (normal approximation)."""
    if se is None:
        return None
    if se <= 0:
        return 1.0 if value > 0 else 0.0
    return normal_cdf(value / se)

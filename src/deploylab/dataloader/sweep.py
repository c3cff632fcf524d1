"""`sweep_workers`: samples/s against `num_workers`, and the knee of that curve."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from deploylab.dataloader.chart import write_sweep_chart
from deploylab.dataloader.diagnose import (
    best_of_rounds,
    check_counts,
    check_dataset,
    check_loader_kwargs,
    environment,
    settings_of,
)
from deploylab.dataloader.measure import Step, default_warmup, measure
from deploylab.dataloader.report import BarChart, Measurement, SweepPoint, SweepReport
from deploylab.errors import UsageError

KNEE_FRACTION = 0.9


def knee(rates: Sequence[float], fraction: float = KNEE_FRACTION) -> int:
    """Index of the first rate reaching `fraction` of the best one."""
    best = max(rates)
    return next(i for i, rate in enumerate(rates) if rate >= fraction * best)


def default_worker_counts(cpu_count: int) -> list[int]:
    """0, 1, 2, 4, ... up to twice the cores (I/O-bound loaders gain past the core count)."""
    counts, n = [0], 1
    while n <= 2 * cpu_count:
        counts.append(n)
        n *= 2
    return counts


def sweep_workers(
    dataset: Dataset[Any],
    loader_kwargs: Mapping[str, Any] | None = None,
    step: Step | None = None,
    *,
    workers: Sequence[int] | None = None,
    steps: int = 30,
    min_seconds: float = 1.0,
    rounds: int = 2,
    max_rounds: int | None = None,
    warmup: int | None = None,
    chart_path: str | Path | None = None,
) -> SweepReport:
    """Measure the pipeline as is at each `num_workers` in `workers` and find the knee.

    Each count runs like a variant of `diagnose` (`steps`, `min_seconds`, `rounds` to
    `max_rounds`; its fastest round is kept). The knee is the fewest workers reaching 90% of
    the best rate.
    """
    check_dataset(dataset)
    base = check_loader_kwargs(loader_kwargs)
    env = environment()
    counts = sorted(set(workers if workers is not None else default_worker_counts(env.cpu_count)))
    if not counts or counts[0] < 0:
        raise UsageError(f"num_workers values must be 0 or more (got {list(workers or [])}).")
    check_counts(steps, rounds, warmup, min_seconds)

    def runner(count: int) -> Callable[[], Measurement]:
        kwargs = {**base, "num_workers": count}
        if count == 0:  # these are refused by DataLoader without workers
            for key in ("prefetch_factor", "persistent_workers"):
                kwargs.pop(key, None)
        warm = default_warmup(kwargs) if warmup is None else warmup
        what = f"your dataset (num_workers={count})"
        return lambda: measure(dataset, kwargs, step, steps, warm, what, min_seconds)

    measured = best_of_rounds([runner(c) for c in counts], rounds, max_rounds)
    points = [
        SweepPoint(num_workers=c, measurement=m, round_rates=rates, steady=steady)
        for c, (m, rates, steady) in zip(counts, measured, strict=True)
    ]
    rates = [p.measurement.samples_per_s for p in points]
    best = points[rates.index(max(rates))].num_workers
    at_knee = points[knee(rates)]
    share = at_knee.measurement.samples_per_s / max(rates)
    summary = (
        f"Best: {max(rates):.1f} samples/s at num_workers={best}. Knee: num_workers="
        f"{at_knee.num_workers} ({at_knee.measurement.samples_per_s:.1f} samples/s, "
        f"{100 * share:.0f}% of the best)"
    )
    if at_knee.num_workers == counts[-1]:
        summary += "; the rate still rises at the most workers tried: try more."
    else:
        summary += "; more workers buy little beyond it."
    chart = BarChart(
        title=f"{type(dataset).__name__}: samples/s vs num_workers",
        x_label="num_workers",
        y_label="samples/s",
        x=[str(c) for c in counts],
        y=list[float | None](rates),
        marked=str(at_knee.num_workers),
    )
    if chart_path is not None:
        chart.png = str(write_sweep_chart(chart, Path(chart_path)))
    return SweepReport(
        dataset_type=type(dataset).__name__,
        loader=settings_of(base),
        environment=env,
        rounds=rounds,
        points=points,
        best_num_workers=best,
        knee_num_workers=at_knee.num_workers,
        knee_fraction=KNEE_FRACTION,
        summary=summary,
        chart=chart,
    )

"""`diagnose`: run the four-variant ablation of a training input pipeline and read it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from deploylab.dataloader.adapters import plan_ablation
from deploylab.dataloader.chart import write_variant_chart
from deploylab.dataloader.measure import Step, default_warmup, loader_batch_size, measure
from deploylab.dataloader.monitor import io_counters_note
from deploylab.dataloader.report import (
    VARIANT_TITLES,
    BarChart,
    DiagnoseReport,
    Environment,
    LoaderSettings,
    Measurement,
    VariantName,
    VariantResult,
)
from deploylab.dataloader.suggest import facts_from
from deploylab.dataloader.variants import VariantPlan, cache_indices
from deploylab.dataloader.verdict import decide
from deploylab.errors import UsageError


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def environment() -> Environment:
    """The machine facts recorded with every report."""
    note = io_counters_note()
    return Environment(
        cpu_count=cpu_count(),
        io_counters=note is None,
        io_note=note,
        torch_version=torch.__version__,
    )


def check_dataset(dataset: Any) -> int:
    """The dataset's length, or a `UsageError` saying why it can't be diagnosed."""
    if isinstance(dataset, IterableDataset):
        raise UsageError(
            f"{type(dataset).__name__} is an IterableDataset; the doctor needs a map-style "
            "dataset (with __len__ and __getitem__) to cache and replay samples by index."
        )
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise UsageError(
            f"{type(dataset).__name__} is not a map-style dataset: give an object with "
            "__len__ and __getitem__ (e.g. a torch.utils.data.Dataset)."
        )
    length = len(dataset)
    if length == 0:
        raise UsageError(
            f"The dataset ({type(dataset).__name__}) has length 0: there is nothing to load. "
            "Check the path or filter that builds it."
        )
    return length


def check_loader_kwargs(loader_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of the DataLoader settings, refusing those the doctor sets itself."""
    kwargs = dict(loader_kwargs or {})
    if "dataset" in kwargs:
        raise UsageError("Give the dataset separately, not as a DataLoader keyword argument.")
    return kwargs


def settings_of(kwargs: Mapping[str, Any]) -> LoaderSettings:
    """The loader settings as recorded in reports."""
    other = {k: repr(v) for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
    return LoaderSettings(
        batch_size=loader_batch_size(kwargs),
        num_workers=int(kwargs.get("num_workers", 0) or 0),
        other=other,
    )


def check_counts(steps: int, rounds: int, warmup: int | None, min_seconds: float = 0) -> None:
    """Refuse step, round, warm-up and time settings that can't give a measurement."""
    if min_seconds < 0:
        raise UsageError(f"min_seconds must be 0 or more (got {min_seconds}).")
    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps}).")
    if rounds < 1:
        raise UsageError(f"rounds must be at least 1 (got {rounds}).")
    if warmup is not None and warmup < 0:
        raise UsageError(f"warmup must be 0 or more (got {warmup}).")


STEADY_TOLERANCE = 0.2  # a variant's best round must be matched within 20% by another


def _steady(rates: Sequence[float], tolerance: float = STEADY_TOLERANCE) -> bool:
    """Whether the best rate is confirmed by a second round within `tolerance`."""
    if len(rates) < 2:
        return False
    best, second = sorted(rates, reverse=True)[:2]
    return second >= (1.0 - tolerance) * best


def best_of_rounds(
    runs: Sequence[Callable[[], Measurement]], rounds: int, max_rounds: int | None = None
) -> list[tuple[Measurement, list[float], bool]]:
    """Run each of `runs` `rounds` times in alternating order (ABCD, DCBA, ...); while a run's
    best rate is not matched within 20% by another round, run it again, up to `max_rounds`
    (default `rounds + 2`; with one round there is nothing to confirm). Returns each run's
    fastest measurement, the rates of all its rounds, and whether its best was confirmed.

    Other load on the machine only ever slows a run down, so the fastest round is the best
    estimate of the undisturbed rate; asking a second round to confirm it guards against
    a lucky one, and alternating the order cancels slow drifts.
    """
    if max_rounds is None:
        max_rounds = rounds + 2 if rounds >= 2 else rounds
    max_rounds = max(rounds, max_rounds)
    done: list[list[Measurement]] = [[] for _ in runs]
    for r in range(max_rounds):
        pending = [
            i
            for i in range(len(runs))
            if r < rounds or not _steady([m.samples_per_s for m in done[i]])
        ]
        if not pending:
            break
        for i in pending if r % 2 == 0 else reversed(pending):
            done[i].append(runs[i]())
    out = []
    for measured in done:
        rates = [m.samples_per_s for m in measured]
        best = max(measured, key=lambda m: m.samples_per_s)
        out.append((best, rates, _steady(rates)))
    return out


def diagnose(
    dataset: Dataset[Any],
    loader_kwargs: Mapping[str, Any] | None = None,
    step: Step | None = None,
    *,
    steps: int = 30,
    min_seconds: float = 1.0,
    rounds: int = 2,
    max_rounds: int | None = None,
    warmup: int | None = None,
    cache_size: int = 16,
    chart_path: str | Path | None = None,
) -> DiagnoseReport:
    """Find what slows an input pipeline by timing four variants of it.

    `dataset` is a map-style dataset (a `StagedDataset`, one with a `transform` attribute, or
    any other); `loader_kwargs` are the DataLoader keyword arguments; `step(batch)` is one
    training step (it must block until done; None times the loader alone). Each variant runs
    `rounds` to `max_rounds` times (see `best_of_rounds`; its fastest round is kept), each
    time `warmup` steps (default: enough to start the workers and fill their queues), then
    at least `steps` measured steps lasting at least `min_seconds`. `cache_size` samples are
    cached for the synthetic variants. With `chart_path`, a bar chart of the variants is
    written there as PNG.
    """
    length = check_dataset(dataset)
    kwargs = check_loader_kwargs(loader_kwargs)
    check_counts(steps, rounds, warmup, min_seconds)
    warm = default_warmup(kwargs) if warmup is None else warmup
    ablation = plan_ablation(dataset, cache_indices(length, max(1, cache_size)))
    measurable = [plan for plan in ablation.plans if plan.dataset is not None]

    def runner(plan: VariantPlan) -> Callable[[], Measurement]:
        what = "your dataset"
        if plan.name is not VariantName.BASELINE:
            what += f" ({plan.name.value} variant)"
        assert plan.dataset is not None
        data = plan.dataset
        return lambda: measure(data, kwargs, step, steps, warm, what, min_seconds)

    measured = dict(
        zip(
            [plan.name for plan in measurable],
            best_of_rounds([runner(plan) for plan in measurable], rounds, max_rounds),
            strict=True,
        )
    )
    results: list[VariantResult] = []
    runs: dict[VariantName, Measurement | None] = {}
    for plan in ablation.plans:
        best, rates, steady = measured.get(plan.name, (None, [], False))
        results.append(
            VariantResult(
                name=plan.name,
                description=VARIANT_TITLES[plan.name],
                status="skipped" if best is None else "measured",
                skipped_reason=plan.skipped_reason,
                note=plan.note,
                measurement=best,
                round_rates=rates,
                steady=steady,
            )
        )
        runs[plan.name] = best
    env = environment()
    verdict, costs = decide(runs, facts_from(kwargs, env.cpu_count, step is not None))
    unsteady = [r.name.value for r in results if r.measurement is not None and not r.steady]
    if unsteady and rounds >= 2:
        verdict.evidence.append(
            f"Rates were unsteady between rounds for {', '.join(unsteady)} (no second round "
            f"within {100 * STEADY_TOLERANCE:.0f}% of the best): other load on the machine "
            "disturbed the runs; weigh the verdict with care, or rerun with more --min-seconds."
        )
    chart = BarChart(
        title=f"{type(dataset).__name__}: samples/s per variant",
        x_label="variant",
        y_label="samples/s (best round)",
        x=[r.name.value for r in results],
        y=[r.measurement.samples_per_s if r.measurement else None for r in results],
    )
    if chart_path is not None:
        chart.png = str(write_variant_chart(chart, Path(chart_path)))
    return DiagnoseReport(
        dataset_type=type(dataset).__name__,
        dataset_length=length,
        adapter=ablation.adapter,
        loader=settings_of(kwargs),
        step=None if step is None else getattr(step, "__qualname__", type(step).__name__),
        environment=env,
        rounds=rounds,
        variants=results,
        stage_costs=costs,
        verdict=verdict,
        chart=chart,
    )

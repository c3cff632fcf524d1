"""`diagnose`: run the four-variant ablation of a training input pipeline and read it."""

from __future__ import annotations

import os
import time
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
    StageCosts,
    VariantName,
    VariantResult,
    Verdict,
)
from deploylab.dataloader.suggest import facts_from
from deploylab.dataloader.variants import Ablation, VariantPlan, cache_indices
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


def check_dataset(dataset: Any) -> int | None:
    """The dataset's length (None for an IterableDataset), or a `UsageError` saying why it
    can't be diagnosed."""
    if isinstance(dataset, IterableDataset):
        return None
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise UsageError(
            f"{type(dataset).__name__} is not a dataset: give a map-style dataset (with "
            "__len__ and __getitem__) or a torch.utils.data.IterableDataset."
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
    steps: int = 10,
    min_seconds: float = 0.2,
    rounds: int = 1,
    max_rounds: int | None = None,
    warmup: int | None = None,
    cache_size: int = 16,
    chart_path: str | Path | None = None,
    precision: float | None = 0.05,
    max_seconds: float = 3.0,
    confidence: float = 0.95,
) -> DiagnoseReport:
    """Find what slows an input pipeline by timing four variants of it.

    `dataset` is a map-style or iterable dataset, written any of the common ways (see
    `adapters`); `loader_kwargs` are the DataLoader keyword arguments; `step(batch)` is one
    training step (it must block until done; None times the loader alone). Each variant runs
    `warmup` steps (default: enough to start the workers and fill their queues), then at least
    `steps` measured steps lasting at least `min_seconds`, and goes on until its rate is known
    within +-`precision` (95% confidence interval) or `max_seconds` have passed. After
    `rounds` rounds (alternating order; each variant keeps its fastest round), more rounds
    run, up to `max_rounds` (default `rounds + 1`), while the verdict is less sure than
    `confidence`. `cache_size` samples are cached for the synthetic variants. With
    `chart_path`, a bar chart of the variants is written there as PNG.
    """
    started = time.perf_counter()
    length = check_dataset(dataset)
    kwargs = check_loader_kwargs(loader_kwargs)
    check_counts(steps, rounds, warmup, min_seconds)
    check_precision(precision, max_seconds, confidence)
    warm = default_warmup(kwargs) if warmup is None else warmup
    count = max(1, cache_size)
    indices = list(range(count)) if length is None else cache_indices(length, count)
    ablation = plan_ablation(dataset, indices, kwargs)
    try:
        measured, done_rounds, verdict_costs = _run_rounds(
            ablation,
            kwargs,
            step,
            steps,
            warm,
            min_seconds,
            precision,
            max_seconds,
            rounds,
            max_rounds,
            confidence,
        )
    finally:
        ablation.close()
    results: list[VariantResult] = []
    for plan in ablation.plans:
        best, rates, steady = measured.get(plan.name, (None, [], False))
        results.append(
            VariantResult(
                name=plan.name,
                description=VARIANT_TITLES[plan.name],
                status="skipped" if best is None else "measured",
                skipped_reason=plan.skipped_reason,
                enable=plan.enable,
                note=plan.note,
                measurement=best,
                round_rates=rates,
                steady=steady,
            )
        )
    env = environment()
    verdict, costs = verdict_costs
    unsteady = [r.name.value for r in results if r.measurement is not None and not r.steady]
    if unsteady and done_rounds >= 2:
        verdict.evidence.append(
            f"Rates were unsteady between rounds for {', '.join(unsteady)} (no second round "
            f"within {100 * STEADY_TOLERANCE:.0f}% of the best): other load on the machine "
            "disturbed the runs; weigh the verdict with care, or rerun with more --min-seconds."
        )
    verdict.evidence.append(confidence_line(verdict, results, done_rounds))
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
        rounds=done_rounds,
        variants=results,
        stage_costs=costs,
        verdict=verdict,
        chart=chart,
        elapsed_s=time.perf_counter() - started,
    )


Measured = dict[VariantName, tuple[Measurement, list[float], bool]]


def _run_rounds(
    ablation: Ablation,
    kwargs: dict[str, Any],
    step: Step | None,
    steps: int,
    warm: int,
    min_seconds: float,
    precision: float | None,
    max_seconds: float,
    rounds: int,
    max_rounds: int | None,
    confidence: float,
) -> tuple[Measured, int, tuple[Verdict, StageCosts | None]]:
    """Measure the variants round after round (ABCD, DCBA, ...) until the verdict is sure
    enough or `max_rounds` is reached; each keeps its fastest round."""
    measurable = [plan for plan in ablation.plans if plan.dataset is not None]
    limit = max(rounds, rounds + 1 if max_rounds is None else max_rounds)
    done: dict[VariantName, list[Measurement]] = {plan.name: [] for plan in measurable}
    facts = facts_from(kwargs, cpu_count(), step is not None)
    r = 0
    while True:
        for plan in measurable if r % 2 == 0 else reversed(measurable):
            base = done.get(VariantName.BASELINE) or []
            reference = max((m.samples_per_s for m in base), default=None)
            done[plan.name].append(
                _measure_plan(
                    plan, kwargs, step, steps, warm, min_seconds, precision, max_seconds, reference
                )
            )
        r += 1
        best = {name: max(ms, key=lambda m: m.samples_per_s) for name, ms in done.items()}
        runs: dict[VariantName, Measurement | None] = {
            plan.name: best.get(plan.name) for plan in ablation.plans
        }
        verdict_costs = decide(runs, facts, ablation.removed)
        sure = (verdict_costs[0].confidence or 0.0) >= confidence
        if r >= limit or (r >= rounds and sure):
            break
    measured = {
        name: (best[name], [m.samples_per_s for m in ms], _steady([m.samples_per_s for m in ms]))
        for name, ms in done.items()
    }
    return measured, r, verdict_costs


def _measure_plan(
    plan: VariantPlan,
    kwargs: dict[str, Any],
    step: Step | None,
    steps: int,
    warm: int,
    min_seconds: float,
    precision: float | None,
    max_seconds: float,
    reference: float | None,
) -> Measurement:
    what = "your dataset"
    if plan.name is not VariantName.BASELINE:
        what += f" ({plan.name.value} variant)"
    settings = kwargs if plan.collate_fn is None else {**kwargs, "collate_fn": plan.collate_fn}
    assert plan.dataset is not None
    return measure(
        plan.dataset,
        settings,
        step,
        steps,
        warm,
        what,
        min_seconds,
        precision,
        max_seconds,
        reference,
    )


def check_precision(precision: float | None, max_seconds: float, confidence: float) -> None:
    """Refuse precision, time-limit and confidence settings that can't be met."""
    if precision is not None and not 0 < precision < 1:
        raise UsageError(
            f"precision must be between 0 and 1, e.g. 0.05 for +-5% (got {precision})."
        )
    if max_seconds <= 0:
        raise UsageError(f"max_seconds must be more than 0 (got {max_seconds}).")
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be between 0 and 1, e.g. 0.95 (got {confidence}).")


def confidence_line(verdict: Verdict, results: list[VariantResult], rounds: int) -> str:
    """How sure the verdict is, in words, from the rates' confidence intervals."""
    if verdict.confidence is None:
        return (
            f"How sure: not computed (too few steps for a confidence interval of every rate; "
            f"{rounds} round(s)); rerun with more --steps."
        )
    sure = f"How sure: {100 * verdict.confidence:.0f}%"
    base = results[0].measurement
    if verdict.bottleneck in ("not_dataloader", "loader_overhead") or base is None:
        return (
            f"{sure} that the dataset's work is under 15% of the time per sample, from the "
            f"rates' 95% confidence intervals ({rounds} round(s))."
        )
    parts = [
        f"{s.stage} {s.ms:.1f} +- {s.ms_ci:.1f} ms"
        if s.ms_ci is not None
        else f"{s.stage} {s.ms:.1f} ms"
        for s in verdict.stages
    ]
    if "Judged by CPU time" in verdict.headline:
        return (
            f"{sure} that {verdict.bottleneck} takes the most CPU time per sample and at least "
            f"half of the baseline's {base.cpu_ms_per_sample:.2f} ms, from the CPU times' 95% "
            f"confidence intervals ({rounds} round(s); wall-time costs: {', '.join(parts)})."
        )
    return (
        f"{sure} that {verdict.bottleneck} costs the most and at least 15% of the "
        f"{1000 / base.samples_per_s:.1f} ms per sample (95% intervals: {', '.join(parts)}; "
        f"{rounds} round(s))."
    )

"""`diagnose`: run the four-variant ablation of a training input pipeline and read it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
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
from deploylab.dataloader.variants import cache_indices
from deploylab.dataloader.verdict import decide, facts_from
from deploylab.errors import UsageError

log = logging.getLogger(__name__)


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


def diagnose(
    dataset: Dataset[Any],
    loader_kwargs: Mapping[str, Any] | None = None,
    step: Step | None = None,
    *,
    steps: int = 50,
    warmup: int | None = None,
    cache_size: int = 16,
    chart_path: str | Path | None = None,
) -> DiagnoseReport:
    """Find what slows an input pipeline by timing four variants of it.

    `dataset` is a map-style dataset (a `StagedDataset`, one with a `transform` attribute, or
    any other); `loader_kwargs` are the DataLoader keyword arguments; `step(batch)` is one
    training step (it must block until done; None times the loader alone). Each variant runs
    `warmup` steps (default: enough to start the workers and fill their queues) and then
    `steps` measured steps. `cache_size` samples are cached for the synthetic variants.
    With `chart_path`, a bar chart of the variants is written there as PNG.
    """
    length = check_dataset(dataset)
    kwargs = check_loader_kwargs(loader_kwargs)
    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps}).")
    warm = default_warmup(kwargs) if warmup is None else warmup
    if warm < 0:
        raise UsageError(f"warmup must be 0 or more (got {warm}).")
    ablation = plan_ablation(dataset, cache_indices(length, max(1, cache_size)))
    results: list[VariantResult] = []
    runs: dict[VariantName, Measurement | None] = {}
    for plan in ablation.plans:
        result = VariantResult(
            name=plan.name,
            description=VARIANT_TITLES[plan.name],
            status="skipped" if plan.dataset is None else "measured",
            skipped_reason=plan.skipped_reason,
            note=plan.note,
        )
        if plan.dataset is not None:
            log.info("measuring variant %s", plan.name.value)
            what = (
                "your dataset"
                if plan.name is VariantName.BASELINE
                else f"your dataset ({plan.name.value} variant)"
            )
            result.measurement = measure(plan.dataset, kwargs, step, steps, warm, what)
        runs[plan.name] = result.measurement
        results.append(result)
    env = environment()
    verdict, costs = decide(runs, facts_from(kwargs, env.cpu_count, step is not None))
    chart = BarChart(
        title=f"{type(dataset).__name__}: samples/s per variant",
        x_label="variant",
        y_label="samples/s",
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
        variants=results,
        stage_costs=costs,
        verdict=verdict,
        chart=chart,
    )

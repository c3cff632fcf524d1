"""Stage costs per sample from the variants' rates, and how the loaders spent their time."""

from __future__ import annotations

from deploylab.dataloader.report import Bottleneck, Measurement, StageCosts, VariantName
from deploylab.dataloader.suggest import WorkerTime, worker_time

STAGE_SHORT: dict[str, str] = {
    "augmentation": "augmentation",
    "data_access": "data access (reading)",
    "decoding": "decoding",
    "dataset": "the dataset's work",
}


def ms_per_sample(m: Measurement | None) -> float | None:
    return None if m is None or m.samples_per_s <= 0 else 1000.0 / m.samples_per_s


def stage_costs(runs: dict[VariantName, Measurement | None]) -> StageCosts | None:
    """Per-sample cost of each stage that the measured variants isolate (ms)."""
    t1 = ms_per_sample(runs.get(VariantName.BASELINE))
    if t1 is None:
        return None
    t2 = ms_per_sample(runs.get(VariantName.NO_AUGMENTATION))
    t3 = ms_per_sample(runs.get(VariantName.SYNTHETIC_READ))
    t4 = ms_per_sample(runs.get(VariantName.SYNTHETIC_DECODE))
    costs = StageCosts(baseline_ms=t1, rest_ms=t3)
    if t3 is not None:
        costs.pipeline_ms = t1 - t3
    if t2 is not None:
        costs.augment_ms = t1 - t2
        if t4 is not None:
            costs.read_ms = t2 - t4
        elif t3 is not None:
            costs.read_and_decode_ms = t2 - t3
    elif t4 is not None:  # no augmentation to turn off: variant 4 is formed from the baseline
        costs.read_ms = t1 - t4
    if t4 is not None and t3 is not None:
        costs.decode_ms = t4 - t3
    c = {name: m.cpu_ms_per_sample for name, m in runs.items() if m is not None}
    c1, c2 = c.get(VariantName.BASELINE), c.get(VariantName.NO_AUGMENTATION)
    c3, c4 = c.get(VariantName.SYNTHETIC_READ), c.get(VariantName.SYNTHETIC_DECODE)
    costs.baseline_cpu_ms = c1
    costs.pipeline_cpu_ms = _minus(c1, c3)
    costs.augment_cpu_ms = _minus(c1, c2)
    costs.read_cpu_ms = _minus(c2 if c2 is not None else c1, c4 if c4 is not None else c3)
    costs.decode_cpu_ms = _minus(c4, c3)
    return costs


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def loading_time(m: Measurement, num_workers: int) -> WorkerTime | None:
    """How the loading processes spent their time: the workers, or with num_workers=0 the
    main process (None where the OS does not report time spent waiting for a core)."""
    if num_workers > 0:
        share = worker_time(m, num_workers)
        return share if share is not None and share.starved is not None else None
    if m.main_cpu_wait_percent is None:
        return None
    busy = min(1.0, m.main_cpu_percent / 100.0)
    starved = min(1.0 - busy, m.main_cpu_wait_percent / 100.0)
    return WorkerTime(busy, starved, max(0.0, 1.0 - busy - starved))


def stages_of(costs: StageCosts) -> dict[Bottleneck, float]:
    """The stage costs a `StageCosts` holds: what the measured variants isolate."""
    out: dict[Bottleneck, float] = {}
    if costs.augment_ms is not None:
        out["augmentation"] = costs.augment_ms
    if costs.read_ms is not None:
        out["data_access"] = costs.read_ms
        out["decoding"] = costs.decode_ms or 0.0
    elif costs.read_and_decode_ms is not None:
        out["data_access"] = costs.read_and_decode_ms
    if not out and costs.pipeline_ms is not None:
        out["dataset"] = costs.pipeline_ms
    return out

"""Reading the ablation on a busy machine: stage costs without the loaders' waits for a free
core, and waits left in the dataset's own code."""

from __future__ import annotations

from deploylab.dataloader.costs import STAGE_SHORT, loading_time, stage_costs, stages_of
from deploylab.dataloader.report import Bottleneck, Measurement, StageCosts, VariantName
from deploylab.dataloader.suggest import LoaderFacts, WorkerTime


def uncontended(runs: dict[VariantName, Measurement | None], num_workers: int) -> StageCosts | None:
    """Stage costs from each variant's time per sample without the share its loaders spent
    waiting for a free core: what the variants would take on a quiet machine, with waits on
    I/O kept (None where the OS does not report the waiting)."""
    quiet: dict[VariantName, Measurement | None] = {}
    for name, m in runs.items():
        if m is None:
            quiet[name] = None
            continue
        spent = loading_time(m, num_workers)
        if spent is None or spent.starved is None:
            return None
        rate = m.samples_per_s / max(0.05, 1.0 - spent.starved)
        quiet[name] = m.model_copy(update={"samples_per_s": rate})
    return stage_costs(quiet)


def waits_explained(
    quiet: StageCosts,
    costs: StageCosts,
    spent: WorkerTime,
    num_workers: int,
    by_cpu: tuple[Bottleneck, float] | None,
) -> bool:
    """Whether to trust the quiet-machine costs over the CPU-time rule: they agree with it,
    or the stage they name waits (costs more than its CPU time) no longer than the loaders
    were actually blocked."""
    stages = stages_of(quiet)
    if not stages:
        return False
    kind = max(stages.items(), key=lambda kv: kv[1])[0]
    if by_cpu is None or by_cpu[0] == kind:
        return True
    cpu = {
        "augmentation": costs.augment_cpu_ms,
        "data_access": costs.read_cpu_ms,
        "decoding": costs.decode_cpu_ms,
        "dataset": costs.pipeline_cpu_ms,
    }.get(kind)
    waiting = stages[kind] - max(0.0, cpu or 0.0) / max(1, num_workers)
    return waiting <= 1.5 * (spent.blocked or 0.0) * costs.baseline_ms


def quiet_line(stages: dict[Bottleneck, float], quiet: StageCosts) -> str:
    parts = [f"{STAGE_SHORT[k]} {v:.1f} ms" for k, v in stages.items()]
    return (
        "Judged by the time per sample without the loaders' waits for a free core (as on a "
        f"quiet machine, waits on I/O kept): {quiet.baseline_ms:.1f} ms in the baseline; by "
        f"stage: {', '.join(parts)}."
    )


def waits_in_decode(
    kind: Bottleneck, runs: dict[VariantName, Measurement | None], facts: LoaderFacts
) -> float | None:
    """The blocked share of the decode-only variant's loaders, if "decoding" mostly waits."""
    decode_only = runs.get(VariantName.SYNTHETIC_DECODE)
    if kind != "decoding" or decode_only is None:
        return None
    spent = loading_time(decode_only, facts.num_workers)
    if spent is None or spent.blocked is None or spent.blocked <= 0.5:
        return None
    return spent.blocked

"""Reading the ablation: stage costs from the variants' rates, a verdict, and suggestions.

The time per sample of a variant, 1000 / (samples/s) ms, drops by what it removed:
augment = baseline - no_augmentation, read = no_augmentation - synthetic_decode,
decode = synthetic_decode - synthetic_read. A stage is the bottleneck when it is the
largest such drop and worth at least `SIGNIFICANT` of the baseline's time per sample.

On a busy machine (the loading processes waited `CONTENDED` of their time or more for a free
core) wall-clock rates swing with the other load, but CPU time per sample does not: there,
unless the loaders mostly wait (blocked on I/O or sleeps, which costs no CPU), a stage that
takes at least half the baseline's CPU time per sample is named instead, provided it also
costs wall time.
"""

from __future__ import annotations

from deploylab.dataloader.busy import quiet_line, uncontended, waits_explained, waits_in_decode
from deploylab.dataloader.confidence import (
    SIGNIFICANT,  # noqa: E402,F401
    Form,
    cpu_stage_confidence,
    not_dataloader_confidence,
    ranked_shares,
    stage_confidence,
)
from deploylab.dataloader.costs import (
    STAGE_SHORT,
    loading_time,
    stage_costs,
)
from deploylab.dataloader.report import (
    Bottleneck,
    Measurement,
    StageCosts,
    VariantName,
    Verdict,
)
from deploylab.dataloader.suggest import LoaderFacts, suggestions, worker_time

__all__ = ["decide", "loading_time", "stage_costs"]

CONTENDED = 0.3  # share of their time the loading processes waited for a core: a busy machine
CPU_DOMINANT = 0.5  # share of the baseline's CPU per sample that names a stage when contended

_STAGE_WORDS: dict[str, str] = {
    "augmentation": "Augmentations (the dataset's transforms) are the bottleneck",
    "data_access": "Data access (reading the samples) is the bottleneck",
    "decoding": "Decoding is the bottleneck",
    "dataset": "The dataset's own work (reading, decoding and transforms together) is the "
    "bottleneck",
}


def _by_cpu(stages: dict[Bottleneck, float], costs: StageCosts) -> tuple[Bottleneck, float] | None:
    """The stage with the most CPU time per sample, if it dominates the baseline's CPU time
    and also costs wall time."""
    cpu: dict[Bottleneck, float | None] = {
        "augmentation": costs.augment_cpu_ms,
        "data_access": costs.read_cpu_ms,
        "decoding": costs.decode_cpu_ms,
        "dataset": costs.pipeline_cpu_ms,
    }
    known = {k: v for k, v in cpu.items() if k in stages and v is not None}
    if not known or not costs.baseline_cpu_ms:
        return None
    kind, cpu_ms = max(known.items(), key=lambda kv: kv[1])
    if cpu_ms < CPU_DOMINANT * costs.baseline_cpu_ms or stages[kind] <= 0:
        return None
    return kind, cpu_ms / costs.baseline_cpu_ms


def _rate_line(label: str, a: Measurement, b: Measurement) -> str:
    gain = 100.0 * (b.samples_per_s / a.samples_per_s - 1.0)
    return f"{label}: {a.samples_per_s:.1f} -> {b.samples_per_s:.1f} samples/s ({gain:+.0f}%)."


def decide(
    runs: dict[VariantName, Measurement | None],
    facts: LoaderFacts,
    removed: str = "the dataset's transforms",
) -> tuple[Verdict, StageCosts | None]:
    """The verdict, with its evidence and suggestions, and the stage costs it rests on."""
    costs = stage_costs(runs)
    base = runs.get(VariantName.BASELINE)
    replay = runs.get(VariantName.SYNTHETIC_READ)
    if costs is None or base is None or replay is None or costs.pipeline_ms is None:
        return Verdict(
            bottleneck="inconclusive",
            headline="Inconclusive: the baseline and the replay of cached samples are both "
            "needed to read the ablation.",
            evidence=[],
            suggestions=[],
        ), costs
    evidence = [
        f"Baseline: {base.samples_per_s:.1f} samples/s, {base.step_time_ms:.1f} ms per step, "
        f"{100 * base.data_wait_share:.0f}% of the time waiting for data.",
        _rate_line("Replaying cached samples (nothing read, decoded or transformed)", base, replay),
    ]
    share = _clamp(costs.pipeline_ms / costs.baseline_ms)
    if share < SIGNIFICANT:
        kind: Bottleneck = "not_dataloader" if facts.has_step else "loader_overhead"
        verdict = _verdict(kind, evidence, runs, facts, share, removed)
        verdict.confidence = not_dataloader_confidence(runs, costs)
        return verdict, costs

    stages, forms = _stages(runs, costs, evidence)
    basis, by_cpu = costs, None
    spent = loading_time(base, facts.num_workers)
    if spent is not None and spent.starved is not None and spent.starved >= CONTENDED:
        evidence.append(_contention_line(spent.starved, costs, stages))
        # Loaders that mostly wait (on I/O, sleeps) are judged by wall time even then: their
        # CPU time per sample is small and mostly per-second overhead.
        if (spent.blocked or 0.0) <= CONTENDED:
            by_cpu = _by_cpu(stages, costs)
        # Loaders mostly blocked are judged by wall time as they are; otherwise the time
        # spent waiting for a core is taken out of each variant (`_uncontended`).
        quiet = uncontended(runs, facts.num_workers) if (spent.blocked or 0.0) <= 0.5 else None
        if quiet is not None and waits_explained(quiet, costs, spent, facts.num_workers, by_cpu):
            stages, forms = _stages(runs, quiet, [])
            basis, by_cpu = quiet, None
            evidence.append(quiet_line(stages, quiet))
    ranked = sorted(stages.items(), key=lambda kv: kv[1], reverse=True)
    kind, cost = ranked[0]
    share = cost / basis.baseline_ms
    if by_cpu is not None:
        kind, share = by_cpu
        verdict = _verdict(kind, evidence, runs, facts, _clamp(share), removed)
        verdict.headline = verdict.headline.replace("of the time per sample", "of the CPU time")
        verdict.headline += " (Judged by CPU time: the machine was busy.)"
        verdict.stages = ranked_shares(ranked, basis, forms, runs, first=kind)
        verdict.confidence = cpu_stage_confidence(kind, forms, runs, CPU_DOMINANT)
        return verdict, costs
    if share < SIGNIFICANT / 2:
        return Verdict(
            bottleneck="inconclusive",
            headline="Inconclusive: replaying cached samples is faster, but no single stage "
            "accounts for it; rerun with more --steps for steadier rates.",
            evidence=evidence,
            suggestions=[],
        ), costs
    waiting = waits_in_decode(kind, runs, facts)
    if waiting is not None:  # the "decoding" left after caching the files mostly waits
        stages["data_access"] = stages.pop("decoding") + stages.get("data_access", 0.0)
        forms["data_access"] = {
            k: forms["decoding"].get(k, 0.0) + forms["data_access"].get(k, 0.0)
            for k in {*forms["decoding"], *forms["data_access"]}
        }
        forms.pop("decoding")
        ranked = sorted(stages.items(), key=lambda kv: kv[1], reverse=True)
        kind, share = "data_access", stages["data_access"] / basis.baseline_ms
        evidence.append(
            f"With the listed files read from RAM, the workers were still blocked "
            f"{100 * waiting:.0f}% of the time: the dataset waits on something else in its "
            "own code (a network fetch, a lock, a sleep), counted here as data access."
        )
    verdict = _verdict(kind, evidence, runs, facts, _clamp(share), removed)
    verdict.stages = ranked_shares(ranked, basis, forms, runs, first=kind)
    verdict.confidence = stage_confidence(kind, stages, forms, runs, basis)
    if len(verdict.stages) > 1:
        second = verdict.stages[1]
        verdict.headline += (
            f" Second: {STAGE_SHORT[second.stage]}, about {100 * second.share:.0f}%."
        )
    return verdict, costs


def _stages(
    runs: dict[VariantName, Measurement | None], costs: StageCosts, evidence: list[str]
) -> tuple[dict[Bottleneck, float], dict[Bottleneck, Form]]:
    """The stages the measured variants isolate: their costs and their forms."""
    base, replay = runs[VariantName.BASELINE], runs[VariantName.SYNTHETIC_READ]
    no_aug = runs.get(VariantName.NO_AUGMENTATION)
    decode_only = runs.get(VariantName.SYNTHETIC_DECODE)
    assert base is not None and replay is not None
    stages: dict[Bottleneck, float] = {}
    forms: dict[Bottleneck, Form] = {}
    before_read, t_before = (base, "1")
    if no_aug is not None and costs.augment_ms is not None:
        stages["augmentation"], forms["augmentation"] = costs.augment_ms, {"1": 1, "2": -1}
        evidence.append(_rate_line("Turning augmentation off", base, no_aug))
        before_read, t_before = no_aug, "2"
    if decode_only is not None and costs.read_ms is not None:
        stages["data_access"], forms["data_access"] = costs.read_ms, {t_before: 1, "4": -1}
        stages["decoding"], forms["decoding"] = costs.decode_ms or 0.0, {"4": 1, "3": -1}
        label = "Then skipping the reads" if no_aug is not None else "Skipping the reads"
        evidence.append(_rate_line(f"{label} (cached bytes decoded)", before_read, decode_only))
        evidence.append(_rate_line("Then skipping decoding too", decode_only, replay))
    elif no_aug is not None:
        stages["data_access"] = costs.read_and_decode_ms or 0.0
        forms["data_access"] = {"2": 1, "3": -1}
        evidence.append(_rate_line("Then skipping reads and decoding", no_aug, replay))
    else:
        stages["dataset"], forms["dataset"] = costs.pipeline_ms or 0.0, {"1": 1, "3": -1}
    return stages, forms


_CPU_LABELS: dict[str, str] = {
    "augmentation": "augmentation",
    "data_access": "reading",
    "decoding": "decoding",
    "dataset": "the dataset",
}


def _contention_line(starved: float, costs: StageCosts, stages: dict[Bottleneck, float]) -> str:
    cpu = {
        "augmentation": costs.augment_cpu_ms,
        "data_access": costs.read_cpu_ms,
        "decoding": costs.decode_cpu_ms,
        "dataset": costs.pipeline_cpu_ms,
    }
    parts = [
        f"{_CPU_LABELS[k]} {max(0.0, v):.2f} ms"
        for k, v in cpu.items()
        if k in stages and v is not None
    ]
    return (
        f"The machine was busy: the loading processes waited {100 * starved:.0f}% of their time "
        "for a free core, so the rates swing with the other load. CPU time per sample, which "
        f"it does not change, was {costs.baseline_cpu_ms or 0:.2f} ms in the baseline; by "
        f"stage: {', '.join(parts)}."
    )


def _clamp(share: float) -> float:
    """A share of the time per sample kept within [0, 1] (rates are measured with noise)."""
    return min(1.0, max(0.0, share))


def _cpu_line(m: Measurement, facts: LoaderFacts) -> str:
    if facts.num_workers == 0:
        return (
            f"With num_workers=0 the main process does all the loading; it used "
            f"{m.main_cpu_percent:.0f}% of a core ({facts.cpu_count} cores here), "
            f"{m.cpu_ms_per_sample:.1f} ms of CPU per sample."
        )
    line = (
        f"The {facts.num_workers} workers used {m.workers_cpu_percent:.0f}% CPU together "
        f"(100% = one core; {facts.cpu_count} cores here), the main process "
        f"{m.main_cpu_percent:.0f}%; {m.cpu_ms_per_sample:.1f} ms of CPU per sample."
    )
    share = worker_time(m, facts.num_workers)
    if share is not None and share.starved is not None and share.blocked is not None:
        line += (
            f" The workers spent {100 * share.busy:.0f}% of their time computing, "
            f"{100 * share.starved:.0f}% waiting for a free core and {100 * share.blocked:.0f}% "
            "blocked (on I/O, sleeps or a full queue)."
        )
    return line


def _io_line(m: Measurement) -> str | None:
    if m.disk_read_bytes is None:
        return "Bytes read from disk: not reported by this OS."
    line = f"Read {m.disk_read_bytes / 1e6:.1f} MB from storage"
    if m.read_call_bytes is not None:
        line += f" ({m.read_call_bytes / 1e6:.1f} MB through read calls, page cache included)"
    return line + " during the baseline."


def _verdict(
    kind: Bottleneck,
    evidence: list[str],
    runs: dict[VariantName, Measurement | None],
    facts: LoaderFacts,
    share: float,
    removed: str = "the dataset's transforms",
) -> Verdict:
    base = runs[VariantName.BASELINE]
    assert base is not None
    evidence = [*evidence, _cpu_line(base, facts)]
    io_line = _io_line(base)
    if io_line is not None and kind in ("data_access", "dataset"):
        evidence.append(io_line)
    if kind == "not_dataloader":
        headline = (
            "The DataLoader is not what slows training: replaying cached samples is barely "
            f"faster (the dataset's work is {100 * share:.0f}% of the time per sample), so look "
            "at the training step."
        )
    elif kind == "loader_overhead":
        headline = (
            "Reading, decoding and transforms cost little here: even replaying cached samples "
            "is barely faster; the loader's own overhead (collation, moving batches between "
            "processes) sets the rate."
        )
    else:
        words = _STAGE_WORDS[kind]
        if kind == "augmentation":
            words = f"Augmentations ({removed}) are the bottleneck"
        headline = f"{words}: about {100 * share:.0f}% of the time per sample."
        if kind == "data_access" and runs.get(VariantName.SYNTHETIC_DECODE) is None:
            headline += " (This includes decoding, which could not be isolated.)"
        if kind == "decoding" and runs.get(VariantName.NO_AUGMENTATION) is None:
            headline += " (This includes the transforms, which could not be turned off.)"
    return Verdict(
        bottleneck=kind,
        headline=headline,
        evidence=evidence,
        suggestions=suggestions(kind, base, facts),
    )

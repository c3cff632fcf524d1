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

from deploylab.dataloader.report import (
    Bottleneck,
    Measurement,
    StageCosts,
    VariantName,
    Verdict,
)
from deploylab.dataloader.suggest import LoaderFacts, WorkerTime, suggestions, worker_time

SIGNIFICANT = 0.15  # share of the baseline's time per sample a stage must cost to count
CONTENDED = 0.3  # share of their time the loading processes waited for a core: a busy machine
CPU_DOMINANT = 0.5  # share of the baseline's CPU per sample that names a stage when contended

_STAGE_WORDS: dict[str, str] = {
    "augmentation": "Augmentations (the dataset's transforms) are the bottleneck",
    "data_access": "Data access (reading the samples) is the bottleneck",
    "decoding": "Decoding is the bottleneck",
    "dataset": "The dataset's own work (reading, decoding and transforms together) is the "
    "bottleneck",
}


def _ms(m: Measurement | None) -> float | None:
    return None if m is None or m.samples_per_s <= 0 else 1000.0 / m.samples_per_s


def stage_costs(runs: dict[VariantName, Measurement | None]) -> StageCosts | None:
    """Per-sample cost of each stage that the measured variants isolate (ms)."""
    t1 = _ms(runs.get(VariantName.BASELINE))
    if t1 is None:
        return None
    t2 = _ms(runs.get(VariantName.NO_AUGMENTATION))
    t3 = _ms(runs.get(VariantName.SYNTHETIC_READ))
    t4 = _ms(runs.get(VariantName.SYNTHETIC_DECODE))
    costs = StageCosts(baseline_ms=t1, rest_ms=t3)
    if t3 is not None:
        costs.pipeline_ms = t1 - t3
    if t2 is not None:
        costs.augment_ms = t1 - t2
        if t4 is not None:
            costs.read_ms = t2 - t4
        elif t3 is not None:
            costs.read_and_decode_ms = t2 - t3
    if t4 is not None and t3 is not None:
        costs.decode_ms = t4 - t3
    c = {name: m.cpu_ms_per_sample for name, m in runs.items() if m is not None}
    c1, c2 = c.get(VariantName.BASELINE), c.get(VariantName.NO_AUGMENTATION)
    c3, c4 = c.get(VariantName.SYNTHETIC_READ), c.get(VariantName.SYNTHETIC_DECODE)
    costs.baseline_cpu_ms = c1
    costs.pipeline_cpu_ms = _minus(c1, c3)
    costs.augment_cpu_ms = _minus(c1, c2)
    costs.read_cpu_ms = _minus(c2, c4 if c4 is not None else c3)
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
    runs: dict[VariantName, Measurement | None], facts: LoaderFacts
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
        return _verdict(kind, evidence, runs, facts, share), costs

    stages: dict[Bottleneck, float] = {}
    no_aug = runs.get(VariantName.NO_AUGMENTATION)
    decode_only = runs.get(VariantName.SYNTHETIC_DECODE)
    if no_aug is not None and costs.augment_ms is not None:
        stages["augmentation"] = costs.augment_ms
        evidence.append(_rate_line("Turning augmentation off", base, no_aug))
        if costs.read_ms is not None and decode_only is not None:
            stages["data_access"] = costs.read_ms
            stages["decoding"] = costs.decode_ms or 0.0
            evidence.append(
                _rate_line("Then skipping the reads (cached bytes decoded)", no_aug, decode_only)
            )
            evidence.append(_rate_line("Then skipping decoding too", decode_only, replay))
        else:
            stages["data_access"] = costs.read_and_decode_ms or 0.0
            evidence.append(_rate_line("Then skipping reads and decoding", no_aug, replay))
    else:
        stages["dataset"] = costs.pipeline_ms
    kind, cost = max(stages.items(), key=lambda kv: kv[1])
    share = cost / costs.baseline_ms
    spent = loading_time(base, facts.num_workers)
    by_cpu = None
    if spent is not None and spent.starved is not None and spent.starved >= CONTENDED:
        evidence.append(_contention_line(spent.starved, costs, stages))
        # Loaders that mostly wait (on I/O, sleeps) are judged by wall time even then: their
        # CPU time per sample is small and mostly per-second overhead.
        if (spent.blocked or 0.0) <= CONTENDED:
            by_cpu = _by_cpu(stages, costs)
    if by_cpu is not None:
        kind, share = by_cpu
        verdict = _verdict(kind, evidence, runs, facts, _clamp(share))
        verdict.headline = verdict.headline.replace("of the time per sample", "of the CPU time")
        verdict.headline += " (Judged by CPU time: the machine was busy.)"
        return verdict, costs
    if share < SIGNIFICANT / 2:
        return Verdict(
            bottleneck="inconclusive",
            headline="Inconclusive: replaying cached samples is faster, but no single stage "
            "accounts for it; rerun with more --steps for steadier rates.",
            evidence=evidence,
            suggestions=[],
        ), costs
    return _verdict(kind, evidence, runs, facts, _clamp(share)), costs


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
        headline = f"{_STAGE_WORDS[kind]}: about {100 * share:.0f}% of the time per sample."
        if kind == "data_access" and runs.get(VariantName.SYNTHETIC_DECODE) is None:
            headline += " (This includes decoding, which could not be isolated.)"
    return Verdict(
        bottleneck=kind,
        headline=headline,
        evidence=evidence,
        suggestions=suggestions(kind, base, facts),
    )

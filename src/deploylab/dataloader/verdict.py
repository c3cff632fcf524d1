"""Reading the ablation: stage costs from the variants' rates, a verdict, and suggestions.

The time per sample of a variant, 1000 / (samples/s) ms, drops by what it removed:
augment = baseline - no_augmentation, read = no_augmentation - synthetic_decode,
decode = synthetic_decode - synthetic_read. A stage is the bottleneck when it is the
largest such drop and worth at least `SIGNIFICANT` of the baseline's time per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploylab.dataloader.report import (
    Bottleneck,
    Measurement,
    StageCosts,
    VariantName,
    Verdict,
)

SIGNIFICANT = 0.15  # share of the baseline's time per sample a stage must cost to count

_STAGE_WORDS: dict[str, str] = {
    "augmentation": "Augmentations (the dataset's transforms) are the bottleneck",
    "data_access": "Data access (reading the samples) is the bottleneck",
    "decoding": "Decoding is the bottleneck",
    "dataset": "The dataset's own work (reading, decoding and transforms together) is the "
    "bottleneck",
}


@dataclass
class LoaderFacts:
    """What the suggestions need to know about the loader and the machine."""

    num_workers: int
    cpu_count: int
    prefetch_factor: int | None
    persistent_workers: bool
    pin_memory: bool
    has_step: bool


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
    return costs


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
    if cost / costs.baseline_ms < SIGNIFICANT / 2:
        return Verdict(
            bottleneck="inconclusive",
            headline="Inconclusive: replaying cached samples is faster, but no single stage "
            "accounts for it; rerun with more --steps for steadier rates.",
            evidence=evidence,
            suggestions=[],
        ), costs
    return _verdict(kind, evidence, runs, facts, _clamp(cost / costs.baseline_ms)), costs


def _clamp(share: float) -> float:
    """A share of the time per sample kept within [0, 1] (rates are measured with noise)."""
    return min(1.0, max(0.0, share))


@dataclass
class WorkerTime:
    """How the workers spent their time: computing, waiting for a core, or blocked."""

    busy: float
    starved: float | None
    blocked: float | None


def worker_time(m: Measurement, num_workers: int) -> WorkerTime | None:
    """Shares of the workers' wall time (None with num_workers=0: the main process loads)."""
    if num_workers == 0:
        return None
    capacity = 100.0 * num_workers
    busy = min(1.0, m.workers_cpu_percent / capacity)
    if m.workers_cpu_wait_percent is None:
        return WorkerTime(busy, None, None)
    starved = min(1.0 - busy, m.workers_cpu_wait_percent / capacity)
    return WorkerTime(busy, starved, max(0.0, 1.0 - busy - starved))


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


def suggestions(kind: Bottleneck, base: Measurement, facts: LoaderFacts) -> list[str]:
    """Concrete changes worth trying for the bottleneck found."""
    out: list[str] = []
    workers, cores = facts.num_workers, facts.cpu_count
    share = worker_time(base, workers)
    busy_share = base.main_cpu_percent / 100 if share is None else share.busy
    io_bound = busy_share < 0.3 if share is None or share.blocked is None else share.blocked > 0.5
    if share is not None and share.starved is not None and share.starved > 0.3:
        out.append(
            f"The workers waited {100 * share.starved:.0f}% of their time for a free core: "
            f"other programs compete for the {cores} cores, or there are more busy workers "
            "than cores. Rates measured on a quieter machine will be higher."
        )
    if kind == "data_access":
        if workers == 0:
            out.append(f"Set num_workers (try {max(2, cores)}) so reads overlap with training.")
        elif io_bound:
            out.append(
                f"Raise num_workers (now {workers}) past the core count ({cores}): the workers "
                f"computed only {100 * busy_share:.0f}% of the time and mostly waited on I/O, "
                "so more of them overlap more reads."
            )
        prefetch = facts.prefetch_factor or 2
        if workers:
            out.append(f"Raise prefetch_factor (now {prefetch}) to keep more reads in flight.")
        out.append(
            "Cache the data closer: local SSD/NVMe or RAM instead of network storage, or keep "
            "the decoded dataset in memory if it fits."
        )
        out.append(
            "Pack many small files into large shards read sequentially (WebDataset tar "
            "files, LMDB, Parquet, or one memory-mapped array)."
        )
    if kind in ("augmentation", "decoding", "dataset"):
        if workers < cores:
            out.append(
                f"Raise num_workers to the core count ({cores}; now {workers}): this stage "
                "burns CPU, so more parallel workers help until the cores are busy."
            )
        else:
            out.append(
                f"More workers won't help: {workers} workers on {cores} cores already share "
                "the CPU; the stage itself must get cheaper or move off the CPU."
            )
    if kind == "augmentation":
        out.append(
            "Move augmentation to the GPU on whole batches (torchvision.transforms.v2 on CUDA "
            "tensors, Kornia, NVIDIA DALI) inside the training step."
        )
        out.append(
            "Crop or resize first and run the costly transforms on the smaller image; time "
            "each transform and drop or cheapen the slowest."
        )
        out.append("Precompute the deterministic transforms once and store their results.")
    if kind == "decoding":
        out.append(
            "Use a faster decoder: pillow-simd, libjpeg-turbo (PyTurboJPEG, simplejpeg), "
            "torchvision.io.decode_jpeg on the GPU, or NVIDIA DALI."
        )
        out.append(
            "Store images at the resolution you train at (decoding cost grows with pixels), "
            "or in a format that is cheaper to decode (JPEG instead of PNG, or raw uint8 "
            "arrays in a memory-mapped file); PIL's Image.draft decodes JPEGs at reduced size."
        )
    if kind == "dataset":
        out.append(
            "Wrap the dataset in deploylab.dataloader.StagedDataset(sources, read, decode, "
            "augment) so the next diagnosis can tell which stage is slow."
        )
    if kind in ("data_access", "augmentation", "decoding", "dataset") and workers:
        if not facts.persistent_workers:
            out.append("Set persistent_workers=True so workers are not restarted every epoch.")
    if kind == "not_dataloader":
        out.append(
            "Profile the training step (torch.profiler) and check that the GPU is busy: "
            "a larger batch, mixed precision (torch.autocast) or torch.compile may help."
        )
        if not facts.pin_memory:
            out.append(
                "If batches go to a GPU, set pin_memory=True and copy with non_blocking=True "
                "so the host-to-device copy overlaps compute."
            )
        if workers and base.data_wait_share > 0.05:
            out.append(
                f"{100 * base.data_wait_share:.0f}% of the time still goes to waiting for data; "
                "a higher prefetch_factor can hide it."
            )
    if kind == "loader_overhead":
        out.append(
            "Return compact tensors from the dataset (not Python lists or many small arrays) "
            "so collation and the transfer between processes stay cheap."
        )
        if not facts.pin_memory:
            out.append("If batches go to a GPU, set pin_memory=True.")
    return out


def facts_from(loader_kwargs: dict[str, Any], cpu_count: int, has_step: bool) -> LoaderFacts:
    """The `LoaderFacts` of a DataLoader's keyword arguments."""
    return LoaderFacts(
        num_workers=int(loader_kwargs.get("num_workers", 0) or 0),
        cpu_count=cpu_count,
        prefetch_factor=loader_kwargs.get("prefetch_factor"),
        persistent_workers=bool(loader_kwargs.get("persistent_workers", False)),
        pin_memory=bool(loader_kwargs.get("pin_memory", False)),
        has_step=has_step,
    )

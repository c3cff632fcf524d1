"""Concrete suggestions for the bottleneck found, and the facts about the loader they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploylab.dataloader.report import Bottleneck, Measurement


@dataclass
class LoaderFacts:
    """What the suggestions need to know about the loader and the machine."""

    num_workers: int
    cpu_count: int
    prefetch_factor: int | None
    persistent_workers: bool
    pin_memory: bool
    has_step: bool


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


def suggestions(kind: Bottleneck, base: Measurement, facts: LoaderFacts) -> list[str]:
    """Concrete changes worth trying for the bottleneck found."""
    out: list[str] = []
    workers, cores = facts.num_workers, facts.cpu_count
    share = worker_time(base, workers)
    busy_share = base.main_cpu_percent / 100 if share is None else share.busy
    blocked = None if share is None else share.blocked
    # Blocked on I/O or sleeps (not computing, not waiting for a core): more loaders overlap
    # more waits, past the core count. Judged from the same split the evidence prints, at
    # the printed precision (a share just over 50% is printed "50%", which is not over half).
    # Where the split is unknown, only reading is presumed to wait when the CPU use is low.
    if blocked is None:
        io_bound = kind in ("data_access", "dataset") and busy_share < 0.3
    else:
        io_bound = round(100 * blocked) > 50
    if share is not None and share.starved is not None and share.starved > 0.3:
        out.append(
            f"The workers waited {100 * share.starved:.0f}% of their time for a free core: "
            f"other programs compete for the {cores} cores, or there are more busy workers "
            "than cores. Rates measured on a quieter machine will be higher."
        )
    loading = kind in ("data_access", "augmentation", "decoding", "dataset")
    if loading and workers == 0:
        out.append(f"Set num_workers (try {max(2, cores)}) so loading overlaps with training.")
    elif loading and io_bound:
        waited = "mostly waited" if blocked is None else f"were blocked {100 * blocked:.0f}%"
        out.append(
            f"Raise num_workers (now {workers}) past the core count ({cores}): the workers "
            f"computed only {100 * busy_share:.0f}% of the time and {waited} of it (on I/O "
            "or sleeps), so more of them overlap more waits."
        )
    elif loading and workers < cores:
        out.append(
            f"Raise num_workers to the core count ({cores}; now {workers}): the workers "
            f"computed {100 * busy_share:.0f}% of the time, so more parallel workers help "
            "until the cores are busy."
        )
    elif loading:
        out.append(
            f"More workers won't help: {workers} workers on {cores} cores already share "
            f"the CPU (they computed {100 * busy_share:.0f}% of the time and were blocked "
            f"only {100 * (blocked or 0.0):.0f}%); the stage itself must get cheaper or "
            "move off the CPU."
        )
    if kind == "data_access":
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
            "Keep the transforms in `self.transform` and the file paths in a list attribute "
            "(or wrap the dataset in deploylab.dataloader.StagedDataset) so the next "
            "diagnosis can tell which stage is slow."
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

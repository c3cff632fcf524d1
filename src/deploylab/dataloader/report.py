"""The typed results of `diagnose` and `sweep_workers` (pydantic, written as JSON by the CLI)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class VariantName(StrEnum):
    """The four variants of the ablation, in the order they run."""

    BASELINE = "baseline"
    NO_AUGMENTATION = "no_augmentation"
    SYNTHETIC_READ = "synthetic_read"
    SYNTHETIC_DECODE = "synthetic_decode"


VARIANT_TITLES: dict[VariantName, str] = {
    VariantName.BASELINE: "the pipeline as is",
    VariantName.NO_AUGMENTATION: "transforms replaced by the cheapest one giving the same shapes",
    VariantName.SYNTHETIC_READ: "nothing read or decoded: a few cached samples replayed",
    VariantName.SYNTHETIC_DECODE: "encoded bytes cached: only decoding and the cheap transform run",
}


class Measurement(BaseModel):
    """What one run of a DataLoader (warm-up excluded) measured."""

    steps: int = Field(description="measured steps (warm-up excluded)")
    warmup_steps: int
    samples: int = Field(description="samples delivered during the measured steps")
    elapsed_s: float
    samples_per_s: float
    step_time_ms: float = Field(description="mean wall time of one step: wait for data + train")
    step_time_p90_ms: float
    rate_ci: float | None = Field(
        default=None,
        description="half-width of the 95% confidence interval of samples/s, relative to it "
        "(batch means over the measured steps); None with too few steps to tell",
    )
    cpu_ci: float | None = Field(
        default=None,
        description="half-width of the 95% confidence interval of CPU ms/sample, relative "
        "to it (ratio estimate over blocks of the run); None with too short a run",
    )
    data_wait_share: float = Field(description="share of the wall time spent waiting for data")
    main_cpu_percent: float = Field(description="CPU of the main process, 100 = one core")
    workers_cpu_percent: float = Field(description="CPU of all worker processes, 100 = one core")
    main_cpu_wait_percent: float | None = Field(
        default=None,
        description="time the main thread was ready to run but waited for a free core "
        "(100 = all the time); None where the OS does not report it",
    )
    workers_cpu_wait_percent: float | None = Field(
        default=None,
        description="time the workers were ready to run but waited for a free core "
        "(100 = one process-second per second); None where the OS does not report it",
    )
    cpu_ms_per_sample: float = Field(
        description="CPU time of the main process and workers per sample delivered (ms); "
        "unlike CPU %, it does not shrink when other programs compete for the cores"
    )
    workers_seen: int = Field(description="worker processes alive during the measured steps")
    disk_read_bytes: int | None = Field(
        description="bytes the processes read from storage (page-cache hits excluded); "
        "None where the OS does not report it"
    )
    read_call_bytes: int | None = Field(
        description="bytes returned by read calls, page-cache hits included; None if unavailable"
    )


class VariantResult(BaseModel):
    """One variant: measured, or skipped with the reason it could not be formed."""

    name: VariantName
    description: str
    status: Literal["measured", "skipped"]
    skipped_reason: str | None = None
    enable: str | None = Field(
        default=None, description="the one-line change to the dataset that would let it be built"
    )
    note: str | None = Field(default=None, description="how the variant was formed, if special")
    measurement: Measurement | None = Field(default=None, description="the fastest round")
    round_rates: list[float] = Field(
        default_factory=list, description="samples/s of every round, in the order run"
    )
    steady: bool = Field(
        default=False, description="whether another round came within 20% of the best"
    )


class StageCosts(BaseModel):
    """What each stage costs per sample (ms, None = unknown), in wall time at the pipeline's
    parallelism (from the rates) and in CPU time (from the processes' CPU counters).

    augment = 1 - 2, read = 2 - 4, decode = 4 - 3; when variant 4 is missing,
    read_and_decode = 2 - 3; rest = variant 3 (step and overhead).
    """

    baseline_ms: float
    augment_ms: float | None = None
    read_ms: float | None = None
    decode_ms: float | None = None
    read_and_decode_ms: float | None = None
    pipeline_ms: float | None = Field(
        default=None, description="baseline - synthetic_read: all the dataset's work together"
    )
    rest_ms: float | None = Field(default=None, description="synthetic_read: step and overhead")
    baseline_cpu_ms: float | None = Field(
        default=None, description="CPU time per sample of the baseline (main + workers)"
    )
    augment_cpu_ms: float | None = Field(default=None, description="CPU per sample, 1 - 2")
    read_cpu_ms: float | None = Field(default=None, description="CPU per sample, 2 - 4")
    decode_cpu_ms: float | None = Field(default=None, description="CPU per sample, 4 - 3")
    pipeline_cpu_ms: float | None = Field(default=None, description="CPU per sample, 1 - 3")


Bottleneck = Literal[
    "augmentation",
    "data_access",
    "decoding",
    "dataset",
    "not_dataloader",
    "loader_overhead",
    "inconclusive",
]


class StageShare(BaseModel):
    """A stage that costs a significant share of the time per sample."""

    stage: Bottleneck
    ms: float = Field(description="its cost per sample (wall time, ms)")
    share: float = Field(description="its share of the baseline's time per sample")
    ms_ci: float | None = Field(
        default=None, description="half-width of the 95% confidence interval of `ms`"
    )


class Verdict(BaseModel):
    """The reading of the ablation in plain words."""

    bottleneck: Bottleneck
    headline: str
    evidence: list[str]
    suggestions: list[str]
    stages: list[StageShare] = Field(
        default_factory=list,
        description="every stage costing a significant share, largest first (the first is "
        "the bottleneck)",
    )
    confidence: float | None = Field(
        default=None,
        description="probability that the named stage is right given the rates' confidence "
        "intervals (normal approximation); None where it can't be computed",
    )


class BarChart(BaseModel):
    """The data behind a bar or line chart, so the JSON carries what the PNG shows."""

    title: str
    x_label: str
    y_label: str
    x: list[str]
    y: list[float | None]
    marked: str | None = Field(default=None, description="the x value highlighted, if any")
    png: str | None = Field(default=None, description="where the PNG was written, if it was")


class LoaderSettings(BaseModel):
    """The DataLoader settings the diagnosis ran with (values shown as text)."""

    batch_size: int | None
    num_workers: int
    other: dict[str, str] = Field(default_factory=dict)


class Environment(BaseModel):
    """Where the measurement ran."""

    cpu_count: int
    io_counters: bool = Field(description="whether the OS reports per-process read bytes")
    io_note: str | None = None
    torch_version: str


class DiagnoseReport(BaseModel):
    """The result of `diagnose`: the variants, the stage costs and the verdict."""

    dataset_type: str
    dataset_length: int | None = Field(description="None for an IterableDataset")
    adapter: str = Field(
        description="how the stages were found: staged, transform, opaque, hugging face "
        "datasets, webdataset pipeline, iterable"
    )
    loader: LoaderSettings
    step: str | None = Field(description="the training step's name, None = loader timed alone")
    environment: Environment
    rounds: int = Field(description="rounds per variant; each variant reports its fastest")
    variants: list[VariantResult]
    stage_costs: StageCosts | None
    verdict: Verdict
    chart: BarChart
    elapsed_s: float | None = Field(default=None, description="time to the verdict (s)")

    def variant(self, name: VariantName | str) -> VariantResult:
        """The result of one variant by name."""
        for result in self.variants:
            if result.name == name:
                return result
        raise KeyError(name)


class SweepPoint(BaseModel):
    """One `num_workers` value of a sweep."""

    num_workers: int
    measurement: Measurement = Field(description="the fastest round")
    round_rates: list[float] = Field(default_factory=list, description="samples/s per round")
    steady: bool = Field(default=False, description="whether another round came within 20%")


class SweepReport(BaseModel):
    """Samples/s against `num_workers`, with the knee: the fewest workers near the best rate."""

    dataset_type: str
    loader: LoaderSettings
    environment: Environment
    rounds: int
    points: list[SweepPoint]
    best_num_workers: int
    knee_num_workers: int
    knee_fraction: float = Field(description="the knee is the first point at this share of best")
    summary: str
    chart: BarChart

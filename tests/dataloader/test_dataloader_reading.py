"""Reading an ablation: stage costs, verdicts and suggestions from given variant rates."""

from __future__ import annotations

import pytest

from deploylab.dataloader.report import Measurement, VariantName
from deploylab.dataloader.suggest import LoaderFacts
from deploylab.dataloader.sweep import default_worker_counts, knee
from deploylab.dataloader.verdict import decide, stage_costs

B, N, R, D = (
    VariantName.BASELINE,
    VariantName.NO_AUGMENTATION,
    VariantName.SYNTHETIC_READ,
    VariantName.SYNTHETIC_DECODE,
)


def m(
    rate: float,
    workers_cpu: float = 50.0,
    main_cpu: float = 20.0,
    wait: float = 0.5,
    cpu_wait: float | None = None,
    cpu_ms: float | None = None,
) -> Measurement:
    return Measurement(
        steps=10,
        warmup_steps=3,
        samples=40,
        elapsed_s=40 / rate,
        samples_per_s=rate,
        step_time_ms=4000 / rate,
        step_time_p90_ms=4400 / rate,
        data_wait_share=wait,
        main_cpu_percent=main_cpu,
        workers_cpu_percent=workers_cpu,
        workers_cpu_wait_percent=cpu_wait,
        cpu_ms_per_sample=(main_cpu + workers_cpu) * 10 / rate if cpu_ms is None else cpu_ms,
        workers_seen=2,
        disk_read_bytes=5_000_000,
        read_call_bytes=9_000_000,
    )


FACTS = LoaderFacts(
    num_workers=2,
    cpu_count=8,
    prefetch_factor=None,
    persistent_workers=False,
    pin_memory=False,
    has_step=True,
)


def test_stage_costs_are_differences_of_time_per_sample() -> None:
    costs = stage_costs({B: m(100), N: m(200), D: m(400), R: m(1000)})
    assert costs is not None
    assert costs.baseline_ms == pytest.approx(10)
    assert costs.augment_ms == pytest.approx(5)
    assert costs.read_ms == pytest.approx(2.5)
    assert costs.decode_ms == pytest.approx(1.5)
    assert costs.rest_ms == pytest.approx(1)
    assert costs.pipeline_ms == pytest.approx(9)
    partial = stage_costs({B: m(100), N: m(200), D: None, R: m(1000)})
    assert partial is not None and partial.read_ms is None
    assert partial.read_and_decode_ms == pytest.approx(4)


def test_largest_stage_wins_with_its_evidence() -> None:
    verdict, _ = decide({B: m(100), N: m(110), D: m(900), R: m(1000)}, FACTS)
    assert verdict.bottleneck == "data_access"
    assert "Turning augmentation off: 100.0 -> 110.0 samples/s (+10%)." in verdict.evidence
    assert any("skipping the reads" in line and "+718%" in line for line in verdict.evidence)
    assert any("5.0 MB from storage" in line for line in verdict.evidence)

    verdict, _ = decide({B: m(100), N: m(105), D: m(120), R: m(1000)}, FACTS)
    assert verdict.bottleneck == "decoding"
    assert "Decoding is the bottleneck" in verdict.headline


def test_io_bound_reads_suggest_more_workers_than_cores() -> None:
    idle = {B: m(100, workers_cpu=10), N: m(100), D: m(1000), R: m(1000)}
    verdict, _ = decide(idle, FACTS)
    assert any(
        "past the core count (8)" in s and "only 5% of the time" in s for s in verdict.suggestions
    )
    assert any("prefetch_factor (now 2)" in s for s in verdict.suggestions)
    busy = {B: m(100, workers_cpu=190), N: m(100), D: m(1000), R: m(1000)}
    verdict, _ = decide(busy, FACTS)
    assert not any("past the core count" in s for s in verdict.suggestions)
    # Workers starved of CPU by other programs are not mistaken for workers waiting on I/O.
    starved = {B: m(100, workers_cpu=40, cpu_wait=150), N: m(100), D: m(1000), R: m(1000)}
    verdict, _ = decide(starved, FACTS)
    assert not any("past the core count" in s for s in verdict.suggestions)
    assert any("waited 75% of their time for a free core" in s for s in verdict.suggestions)
    assert any("20% of their time computing, 75% waiting" in e for e in verdict.evidence)


def test_cpu_bound_stage_suggests_workers_up_to_the_cores_only() -> None:
    runs = {B: m(100, workers_cpu=190), N: m(500), D: m(520), R: m(540)}
    verdict, _ = decide(runs, FACTS)
    assert verdict.bottleneck == "augmentation"
    assert any("Raise num_workers to the core count (8; now 2)" in s for s in verdict.suggestions)
    saturated = LoaderFacts(**{**FACTS.__dict__, "num_workers": 8})
    verdict, _ = decide(runs, saturated)
    assert any("More workers won't help" in s for s in verdict.suggestions)
    assert any("persistent_workers=True" in s for s in verdict.suggestions)


def test_busy_machine_names_the_stage_by_cpu_time() -> None:
    # Wall-clock rates disturbed by other load point at reading, but decoding takes 80% of
    # the CPU time per sample: on a busy machine the CPU time decides.
    busy = dict(workers_cpu=40, cpu_wait=150)
    runs = {
        B: m(100, cpu_ms=3.0, **busy),
        N: m(100, cpu_ms=3.0, **busy),
        D: m(300, cpu_ms=2.8, **busy),
        R: m(1000, cpu_ms=0.4, cpu_wait=20),
    }
    verdict, costs = decide(runs, FACTS)
    assert costs is not None and costs.decode_cpu_ms == pytest.approx(2.4)
    assert verdict.bottleneck == "decoding"
    assert "Judged by CPU time" in verdict.headline and "80% of the CPU time" in verdict.headline
    assert any("The machine was busy" in e and "decoding 2.40 ms" in e for e in verdict.evidence)
    # Reads that wait cost no CPU: they are still judged by wall time.
    waiting = {**runs, N: m(100, cpu_ms=0.9, **busy), B: m(100, cpu_ms=1.0, **busy)}
    waiting[D] = m(900, cpu_ms=0.8, **busy)
    verdict, _ = decide(waiting, FACTS)
    assert verdict.bottleneck == "data_access" and "Judged by CPU" not in verdict.headline
    # Loaders that mostly block (here 55% of their time) are judged by wall time too.
    blocked = dict(workers_cpu=20, cpu_wait=70)
    verdict, _ = decide({**runs, B: m(100, cpu_ms=3.0, **blocked)}, FACTS)
    assert verdict.bottleneck == "data_access" and "Judged by CPU" not in verdict.headline
    # On a quiet machine the wall-clock rates decide.
    quiet = {k: v.model_copy(update={"workers_cpu_wait_percent": 5.0}) for k, v in runs.items()}
    verdict, _ = decide(quiet, FACTS)
    assert verdict.bottleneck == "data_access"


def test_no_speed_up_means_not_the_dataloader_or_its_overhead() -> None:
    runs = {B: m(100, wait=0.02), N: m(101), D: m(99), R: m(104)}
    verdict, _ = decide(runs, FACTS)
    assert verdict.bottleneck == "not_dataloader"
    assert "look at the training step" in verdict.headline
    assert any("pin_memory=True" in s for s in verdict.suggestions)
    verdict, _ = decide(runs, LoaderFacts(**{**FACTS.__dict__, "has_step": False}))
    assert verdict.bottleneck == "loader_overhead"


def test_missing_variants_narrow_the_verdict() -> None:
    verdict, _ = decide({B: m(100), N: None, D: None, R: m(1000)}, FACTS)
    assert verdict.bottleneck == "dataset"
    assert any("StagedDataset" in s for s in verdict.suggestions)
    verdict, _ = decide({B: m(100), N: m(110), D: None, R: m(1000)}, FACTS)
    assert verdict.bottleneck == "data_access"
    assert "includes decoding" in verdict.headline
    verdict, _ = decide({B: m(100), N: None, D: None, R: None}, FACTS)
    assert verdict.bottleneck == "inconclusive"


def test_knee_is_the_first_count_near_the_best() -> None:
    assert knee([10.0, 50.0, 95.0, 100.0, 99.0]) == 2
    assert knee([100.0, 50.0]) == 0
    assert knee([10.0, 20.0, 40.0]) == 2
    assert default_worker_counts(2) == [0, 1, 2, 4]
    assert default_worker_counts(8) == [0, 1, 2, 4, 8, 16]


def precise(rate: float, ci: float, **kw: float) -> Measurement:
    return m(rate, **kw).model_copy(update={"rate_ci": ci, "cpu_ci": ci})


def test_two_bottlenecks_are_named_largest_first_with_how_sure() -> None:
    # 20 ms per sample: reading 10 ms, augmentation 7.5 ms, decoding 0.5 ms.
    runs = {
        B: precise(50, 0.02),
        N: precise(80, 0.02),
        D: precise(400, 0.02),
        R: precise(500, 0.02),
    }
    verdict, _ = decide(runs, FACTS)
    assert [s.stage for s in verdict.stages] == ["data_access", "augmentation"]
    assert verdict.stages[0].ms == pytest.approx(10)
    assert verdict.stages[1].share == pytest.approx(0.375)
    assert "Second: augmentation, about 38%" in verdict.headline
    assert verdict.confidence is not None and verdict.confidence > 0.95
    # Wider intervals on the same rates: less sure, never more.
    loose = {k: v.model_copy(update={"rate_ci": 0.4}) for k, v in runs.items()}
    unsure, _ = decide(loose, FACTS)
    assert unsure.confidence is not None and unsure.confidence < verdict.confidence
    # Without intervals there is no confidence to give.
    bare, _ = decide({k: v.model_copy(update={"rate_ci": None}) for k, v in runs.items()}, FACTS)
    assert bare.confidence is None


def test_blocked_loaders_get_more_workers_than_cores_whatever_the_stage() -> None:
    # 8 workers on 8 cores, computing 10% and blocked 85% of the time: the opaque dataset's
    # work waits. The old advice said "More workers won't help" because of the core count.
    full = LoaderFacts(**{**FACTS.__dict__, "num_workers": 8})
    base = m(100, workers_cpu=80, cpu_wait=40)
    verdict, _ = decide({B: base, N: None, D: None, R: m(1000)}, full)
    assert verdict.bottleneck == "dataset"
    assert not any("won't help" in s for s in verdict.suggestions)
    assert any("past the core count (8)" in s and "blocked 85%" in s for s in verdict.suggestions)
    assert any("85% blocked" in e for e in verdict.evidence)
    # Computing, not blocked: then more workers than cores won't help, and it says why.
    busy = m(100, workers_cpu=760, cpu_wait=0)
    verdict, _ = decide({B: busy, N: None, D: None, R: m(1000)}, full)
    assert any("won't help" in s and "blocked only 5%" in s for s in verdict.suggestions)
    assert not any("past the core count" in s for s in verdict.suggestions)


def test_waits_left_after_caching_the_files_count_as_data_access() -> None:
    # Decode-only (files read from RAM) is still slow and its workers mostly blocked.
    blocked = m(120, workers_cpu=10, cpu_wait=10)
    verdict, _ = decide({B: m(100), N: m(105), D: blocked, R: m(1000)}, FACTS)
    assert verdict.bottleneck == "data_access"
    assert any("still blocked" in e for e in verdict.evidence)

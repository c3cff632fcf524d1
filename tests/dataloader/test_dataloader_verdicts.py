"""The four planted bottlenecks: the verdict must name each one, with evidence to back it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataloader_planted import (
    SLOW_READ_S,
    SLOW_STEP_S,
    SlowDiskImages,
    SmallArrays,
    big_png_dataset,
    heavy_augment_dataset,
    slow_step,
)

from deploylab.dataloader import DiagnoseReport, VariantName, diagnose

LOADER = {"batch_size": 2, "num_workers": 2}


def rates(report: DiagnoseReport) -> str:
    """The measured variants, for assertion messages."""
    lines = [report.verdict.headline]
    for v in report.variants:
        m = v.measurement
        if m is not None:
            lines.append(
                f"{v.name.value}: {v.round_rates} samples/s, "
                f"cpu {m.cpu_ms_per_sample:.2f} ms/sample, starved {m.workers_cpu_wait_percent}%, "
                f"disk {m.disk_read_bytes}, read calls {m.read_call_bytes}"
            )
    return "\n".join(lines)


@pytest.mark.usefixtures("no_leftover_children")
def test_waits_inside_the_datasets_own_code_are_data_access(small_pngs: Path) -> None:
    # The wait sits in __getitem__ itself, not in the listed files: reading those from RAM
    # does not remove it, the workers stay blocked, and the doctor says so.
    report = diagnose(
        SlowDiskImages(small_pngs), LOADER, steps=6, min_seconds=0.3, rounds=2, max_seconds=1.5
    )
    assert report.adapter == "transform"
    assert all(v.status == "measured" for v in report.variants), report.variants
    assert report.verdict.bottleneck == "data_access", rates(report)
    base = report.variant(VariantName.BASELINE).measurement
    assert base is not None
    # CPU time per sample, unlike CPU %, does not depend on other load on the machine.
    assert base.cpu_ms_per_sample < 1000 * SLOW_READ_S / 2
    assert base.workers_seen == 2
    assert base.read_call_bytes is None or base.read_call_bytes > 0
    assert any("still blocked" in line for line in report.verdict.evidence), rates(report)
    assert any("past the core count" in s for s in report.verdict.suggestions)
    assert "Data access" in report.verdict.headline


@pytest.mark.usefixtures("no_leftover_children")
def test_cpu_heavy_augmentation_is_augmentation(arrays: Path) -> None:
    report = diagnose(
        heavy_augment_dataset(arrays), LOADER, steps=6, min_seconds=0.3, rounds=2, max_seconds=1.5
    )
    assert report.adapter == "staged"
    assert report.verdict.bottleneck == "augmentation", rates(report)
    base = report.variant(VariantName.BASELINE).measurement
    no_aug = report.variant(VariantName.NO_AUGMENTATION).measurement
    assert base is not None and no_aug is not None
    assert no_aug.samples_per_s > 1.5 * base.samples_per_s
    # The workers were computing, not waiting.
    assert base.cpu_ms_per_sample > 5
    assert any("GPU" in s for s in report.verdict.suggestions)
    assert report.stage_costs is not None and report.stage_costs.augment_ms is not None
    assert report.stage_costs.augment_ms > 0.5 * report.stage_costs.baseline_ms


@pytest.mark.usefixtures("no_leftover_children")
def test_expensive_decoding_is_decoding(big_pngs: Path) -> None:
    report = diagnose(
        big_png_dataset(big_pngs), LOADER, steps=6, min_seconds=0.4, rounds=2, max_seconds=1.5
    )
    assert report.verdict.bottleneck == "decoding", rates(report)
    decode_only = report.variant(VariantName.SYNTHETIC_DECODE).measurement
    replay = report.variant(VariantName.SYNTHETIC_READ).measurement
    assert decode_only is not None and replay is not None
    assert replay.samples_per_s > 1.5 * decode_only.samples_per_s
    assert any("decoder" in s for s in report.verdict.suggestions)
    # The chart data carries every variant's rate.
    assert report.chart.x == [v.value for v in VariantName]
    assert all(y is not None and y > 0 for y in report.chart.y)


@pytest.mark.usefixtures("no_leftover_children")
def test_slow_training_step_is_not_the_dataloader(arrays: Path) -> None:
    report = diagnose(
        SmallArrays(arrays), LOADER, slow_step, steps=8, min_seconds=0.3, rounds=2, max_seconds=1.5
    )
    assert report.adapter == "opaque"
    assert report.verdict.bottleneck == "not_dataloader", rates(report)
    assert report.verdict.confidence is not None
    assert "not what slows training" in report.verdict.headline
    # Stages it can't isolate are skipped with the reason, never faked.
    skipped = {v.name for v in report.variants if v.status == "skipped"}
    assert skipped == {VariantName.NO_AUGMENTATION}
    for v in report.variants:
        if v.status == "skipped":
            assert v.skipped_reason and "transform" in v.skipped_reason
            assert v.enable and "self.transform" in v.enable
            assert v.measurement is None
    base = report.variant(VariantName.BASELINE).measurement
    assert base is not None and base.data_wait_share < 0.2
    assert base.step_time_ms >= 1000 * SLOW_STEP_S
    assert any("profile" in s.lower() for s in report.verdict.suggestions)

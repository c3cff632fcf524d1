"""The accuracy suite: planted bottlenecks in datasets written the common ways, unmodified.

Every shape (torchvision style, ImageFolder look-alike, Hugging Face, webdataset, a plain
IterableDataset, work in collate_fn) x every case (slow storage with jitter, heavy
augmentation, slow decoding, slow training step, storage + augmentation at once): all four
variants must be built, the right stage named (both, largest first, for two at once), the
verdict must say how sure it is, and every suggestion must agree with the evidence printed.
Small images and short runs keep it fit for CI; benchmarks/dataloader_accuracy.py runs the
same cases with the default settings and times them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dataloader_cases import CASES, SHAPES, Costs, build_case

from deploylab.dataloader import DiagnoseReport, diagnose

# The planted costs dominate by wide margins; short runs (at most 0.8 s a variant; a second
# round only when the verdict is less than 95% sure).
FAST = {"steps": 10, "min_seconds": 0.25, "precision": 0.1, "max_seconds": 0.8, "max_rounds": 2}
# Verdicts at least this sure must be right; one less sure may miss, but must say it is unsure.
SURE = 0.95
# Outcomes of the cases run so far in this module: (right, confidence).
TALLY: list[tuple[bool, float | None]] = []


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("planted")


def named(report: DiagnoseReport) -> list[str]:
    """The stages the verdict names, largest first (or its one-word verdict)."""
    return [s.stage for s in report.verdict.stages] or [report.verdict.bottleneck]


def explain(report: DiagnoseReport) -> str:
    lines = [report.verdict.headline, *report.verdict.evidence]
    for v in report.variants:
        m = v.measurement
        rate = (
            "skipped"
            if m is None
            else f"{v.round_rates} +-{m.rate_ci} cpu {m.cpu_ms_per_sample:.2f}"
        )
        lines.append(f"{v.name.value}: {rate} {v.skipped_reason or ''}")
    return "\n".join(lines)


_SPLIT = re.compile(r"(\d+)% of their time computing, (\d+)% waiting for a free core and (\d+)%")


def assert_advice_matches_evidence(report: DiagnoseReport) -> None:
    """Each worker-count suggestion agrees with the workers' time split in the evidence."""
    splits = [m for line in report.verdict.evidence if (m := _SPLIT.search(line))]
    for suggestion in report.verdict.suggestions:
        if "past the core count" in suggestion or "More workers won't help" in suggestion:
            assert splits, f"{suggestion!r} without the workers' time split in the evidence"
            blocked = int(splits[0].group(3))
            if "past the core count" in suggestion:
                assert blocked > 50 and f"blocked {blocked}%" in suggestion
            else:
                assert blocked <= 50 and f"blocked only {blocked}%" in suggestion


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.usefixtures("no_leftover_children")
def test_planted_bottleneck_is_named_on_the_unmodified_dataset(
    shape: str, case: str, root: Path
) -> None:
    planted = build_case(shape, case, root, Costs())
    report = diagnose(planted.dataset, planted.loader_kwargs, planted.step, **FAST)
    not_built = {v.name.value: v.skipped_reason for v in report.variants if v.status != "measured"}
    assert not not_built, not_built
    right = named(report)[: len(planted.expected)] == planted.expected
    sure = report.verdict.confidence
    TALLY.append((right, sure))
    assert any(line.startswith("How sure:") for line in report.verdict.evidence)
    assert_advice_matches_evidence(report)
    # On a busy machine a short run can miss; then the verdict must not claim to be sure.
    assert right or (sure is not None and sure < SURE), explain(report)


def test_most_planted_cases_are_named_right() -> None:
    """Across the cases above (run first, in file order): at least 80% named right."""
    if len(TALLY) < len(SHAPES) * len(CASES):
        pytest.skip("runs after the whole accuracy suite only")
    right = sum(r for r, _ in TALLY)
    assert right >= 0.8 * len(TALLY), TALLY

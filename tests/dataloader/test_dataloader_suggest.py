"""Worker-count advice at the edge of its rule: the advice agrees with the split the evidence
prints (a share printed "50%" is never called more than half)."""

from __future__ import annotations

import pytest

from deploylab.dataloader.report import Measurement
from deploylab.dataloader.suggest import LoaderFacts, suggestions, worker_time

FACTS = LoaderFacts(
    num_workers=2, cpu_count=2, prefetch_factor=2, persistent_workers=False, pin_memory=False,
    has_step=True,
)  # fmt: skip


def measured(workers_cpu: float, workers_wait: float) -> Measurement:
    return Measurement(
        steps=20, warmup_steps=2, samples=80, elapsed_s=1.0, samples_per_s=80.0,
        step_time_ms=50.0, step_time_p90_ms=60.0, data_wait_share=0.8, main_cpu_percent=10.0,
        workers_cpu_percent=workers_cpu, workers_cpu_wait_percent=workers_wait,
        cpu_ms_per_sample=25.0, workers_seen=2, disk_read_bytes=None, read_call_bytes=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("workers_cpu", "blocked_pct", "past_cores"),
    [(99.4, 50, False), (98.8, 51, True), (102.0, 49, False), (140.0, 30, False)],
)
def test_more_workers_only_when_the_printed_blocked_share_is_over_half(
    workers_cpu: float, blocked_pct: int, past_cores: bool
) -> None:
    m = measured(workers_cpu, 0.0)  # 2 workers: 200 % of capacity, no waits for a core
    share = worker_time(m, FACTS.num_workers)
    assert share is not None and share.blocked is not None
    assert f"{100 * share.blocked:.0f}" == str(blocked_pct)
    advice = " ".join(suggestions("augmentation", m, FACTS))
    if past_cores:
        assert f"past the core count ({FACTS.cpu_count})" in advice
        assert f"were blocked {blocked_pct}%" in advice
    else:
        assert "past the core count" not in advice
        assert f"blocked only {blocked_pct}%" in advice

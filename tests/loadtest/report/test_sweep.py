"""Capacity search against the law stub, whose latency follows a known law, so the capacity
has an analytic value: found within 10 %."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reporthelpers import in_thread, open_checked, plot_facts, scenario

from deploylab.cli import main
from deploylab.errors import UsageError
from deploylab.loadtest.capacity import StepCheck
from deploylab.loadtest.config import resolve_load
from deploylab.loadtest.runner import execute, prepare_run
from deploylab.loadtest.sweep import SweepOptions, margin_of, search_capacity


def test_concurrency_capacity_matches_the_law_through_the_cli(
    law: Any, tmp_path: Path, browser_context: Any, artifacts: Path
) -> None:
    # TTFT = 20 + 60 n ms with n requests in flight; SLO p50 <= 650 ms: n <= 10.5, so the
    # analytic capacity is 10 concurrent requests (620 ms passes, 11 gives 680 ms). The SLO
    # is on the median so that scheduling hiccups of a busy test machine do not decide it.
    law.configure(law="concurrency", base_ms=20, per_request_ms=60)
    loaded = scenario(tmp_path, "conc", slo="  ttft_ms: {p50: 650}", load="concurrency: 2")
    out = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "deploylab", "loadtest", "sweep", "--scenario", loaded.source,
         "--url", law.url, "--by", "concurrency", "--duration", "2", "--warmup", "0.5",
         "--out", str(out), "--no-progress", "--scrape-interval", "0"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    capacity = json.loads((out / "results.json").read_text())["capacity"]
    assert capacity["by"] == "concurrency" and capacity["limited_by"] == "slo"
    assert abs(capacity["capacity"] - 10) <= 1.0, capacity
    assert capacity["lowest_failed"] == capacity["capacity"] + 1  # bracket closed
    assert len(capacity["steps"]) <= 12
    assert "capacity (law-conc, by concurrency): " in done.stdout
    # the report shows the latency-vs-load curve
    page = open_checked(browser_context, out / "report.html", artifacts / "sweep.png")
    try:
        facts = plot_facts(page)
        assert {"capacity-latency", "capacity-goodput"} <= set(facts)
        for name in ("capacity-latency", "capacity-goodput"):
            assert facts[name]["paths"] >= 2 and facts[name]["width"] > 300, facts[name]
        assert page.locator("#slo-verdict").is_visible()
        assert page.locator("#capacity").is_visible()
    finally:
        page.close()


def test_rate_capacity_matches_the_slots_law(law: Any, tmp_path: Path) -> None:
    # 8 slots of 200 ms each: at most 40 req/s; above it the queue (and TTFT) grows for the
    # whole step, below it TTFT stays at 200 ms. SLO p50 <= 250 ms: over 2 s at rate r > 40
    # the median wait is about (r - 40) / 40 s, so loads from about 42 req/s on miss.
    law.configure(law="slots", slots=8, service_ms=200)
    loaded = scenario(tmp_path, "rate", slo="  ttft_ms: {p50: 250}", load="rate: 5")
    prepared = prepare_run(loaded, law.url)
    base = resolve_load(loaded.scenario.load, duration_s=2.0, arrival="constant")
    seen: list[Any] = []
    options = SweepOptions(by="rate", max_steps=10, probe_concurrency=16)
    capacity, results = in_thread(
        search_capacity, lambda load: execute(prepared, load), base, options, seen.append
    )
    assert seen == capacity.steps and seen[0].phase == "probe" and seen[0].mode == "closed"
    assert capacity.saturation_rps is not None and 30 < capacity.saturation_rps < 42
    assert capacity.capacity == pytest.approx(40, rel=0.1), capacity.steps
    assert capacity.limited_by == "slo"
    # the results kept are the run at capacity, and it met the SLO
    assert results.config.load.rate == capacity.capacity
    assert results.summary.slo_passed is True
    assert capacity.result_step == next(s.index for s in seen if s.load == capacity.capacity)


def test_margin_is_the_worst_ratio_to_the_limit() -> None:
    def check(measured: float | None, limit: float, metric: str = "ttft_ms") -> StepCheck:
        passed = None if measured is None else measured <= limit
        return StepCheck(
            metric=metric, percentile=99, limit=limit, measured=measured, passed=passed
        )

    assert margin_of([check(50, 100), check(300, 200)]) == 1.5
    assert margin_of([check(None, 100)]) is None
    assert margin_of([check(0.1, 0.0, "error_rate")]) == float("inf")


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (SweepOptions(by="speed"), "--by 'speed'"),  # type: ignore[arg-type]
        (SweepOptions(max_steps=2), "--max-steps 2"),
        (SweepOptions(tolerance=1.5), "--tolerance 1.5"),
        (SweepOptions(max_load=-1), "--max-load"),
    ],
)
def test_bad_sweep_options_are_usage_errors(options: SweepOptions, said: str) -> None:
    with pytest.raises(UsageError, match=said.replace("'", "'")):
        options.check()


def test_sweep_of_a_scenario_without_slo_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "noslo.yaml"
    path.write_text(
        "name: noslo\ndescription: d\nbottleneck: b\nload: {rate: 1}\nworkload:\n"
        "  kind: synthetic\n  input_tokens: {dist: fixed, value: 8}\n"
        "  output_tokens: {dist: fixed, value: 2}\n"
    )
    code = main(["loadtest", "sweep", "--scenario", str(path), "--url", "http://127.0.0.1:9",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "sets no SLO" in capsys.readouterr().err

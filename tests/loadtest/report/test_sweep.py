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
    # the results kept are the run at the highest passing offer, and it met the SLO
    assert results.config.load.rate == capacity.highest_passed
    held = [min(s.load, s.requests_per_s or 0) for s in seen if s.passed and s.phase == "search"]
    assert capacity.capacity == max(held)
    assert results.summary.slo_passed is True
    assert capacity.result_step == next(s.index for s in seen if s.load == capacity.highest_passed)


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


def _fake_results(load: Any, completed_rps: float, ttft_p99: float, window: float) -> Any:
    """Results of one step of a fake target (only what the search reads)."""
    from deploylab.loadtest.results import (
        LatencyStats,
        Results,
        RunConfig,
        ScenarioInfo,
        SLOCheck,
        Summary,
        TargetInfo,
    )

    lat = LatencyStats(count=100, p50=ttft_p99 / 2, p99=ttft_p99)
    check = SLOCheck(
        metric="ttft_ms", percentile=99, limit=500, measured=ttft_p99, passed=ttft_p99 <= 500
    )
    summary = Summary(
        requests_completed=100, requests_failed=0, ttft_ms=lat, itl_ms=lat, tpot_ms=lat,
        e2e_ms=lat, ttft_response_ms=lat, e2e_response_ms=lat, schedule_lateness_ms=lat,
        output_tokens_per_s=1.0, requests_per_s=completed_rps, goodput_rps=completed_rps,
        error_rate=0.0, window_s=(0.0, window), slo=[check], slo_passed=check.passed,
    )  # fmt: skip
    return Results(
        scenario=ScenarioInfo(name="f", source="f", description="", bottleneck="",
                              workload_kind="synthetic", definition={}),
        target=TargetInfo(url="http://x", models_served=None, default_model="m", model_map={}),
        config=RunConfig(load=load, mode=load.mode, api="chat", tokenizer=None,
                         exact_token_counts=False, deploylab_version="0"),
        started_at="2026-12-06T00:00:00Z", finished_at="2026-12-06T00:00:10Z",
        summary=summary, requests=[],
    )  # fmt: skip


def test_capacity_is_never_above_a_rate_measured_to_hold() -> None:
    """Short steps flatter rates above what the target sustains (20.5 req/s here): the queue
    has no time to grow, so an offer of 23 req/s passes while only 20.5 req/s complete."""
    from deploylab.loadtest.config import LoadConfig

    def run(load: LoadConfig) -> Any:
        offered = load.rate if load.rate is not None else 30.0
        done = min(offered, 20.5)
        ttft = 100 if offered <= 23.5 else 900  # passes up to 23.5 req/s offered
        return _fake_results(load, done, ttft, window=4.0)

    base = LoadConfig(rate=1, duration_s=6, warmup_s=1, cooldown_s=1)
    capacity, _ = search_capacity(run, base, SweepOptions(max_steps=12, start=16))
    assert capacity.highest_passed is not None and capacity.highest_passed > 20.5
    assert capacity.capacity == 20.5  # what the passing step completed, not what it was offered
    assert any("completed only 20.5 req/s" in n and "--duration" in n for n in capacity.notes)


def test_short_steps_are_said_to_be_short() -> None:
    from deploylab.loadtest.config import LoadConfig

    def run(load: LoadConfig) -> Any:  # E2E p99 of 2 s: a 4 s window is too short to judge
        res = _fake_results(load, load.rate or 10.0, 100 if (load.rate or 0) < 12 else 900, 4.0)
        res.summary.e2e_response_ms = res.summary.e2e_response_ms.model_copy(update={"p99": 2000})
        return res

    base = LoadConfig(rate=1, duration_s=6, warmup_s=1, cooldown_s=1)
    capacity, _ = search_capacity(run, base, SweepOptions(max_steps=8, start=8))
    assert any("less than 5 x the E2E p99" in n for n in capacity.notes), capacity.notes

"""Each fault the simulator injects shows up in `deploylab loadtest`'s error counts, by kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from simhelpers import gaps, run_sim

from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.library import load_scenario_file
from deploylab.loadtest.results import Results
from deploylab.loadtest.runner import run_load

SCENARIO = """
schema_version: 1
name: sim-faults
description: Tiny fixed-size requests.
bottleneck: none; used to check error accounting.
request: {api: completions}
load: {concurrency: 8, requests: 100}
slo: {error_rate: 1.0}
workload:
  kind: synthetic
  input_tokens: 16
  output_tokens: 6
"""


def _run(
    tmp_path: Path, sim_yaml: str, requests: int, timeout_s: float = 30
) -> tuple[Results, dict[str, Any]]:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    load = LoadConfig(concurrency=8, requests=requests, timeout_s=timeout_s)
    with run_sim(sim_yaml) as sim:
        results = run_load(load_scenario_file(path), sim.url, load)
        stats = sim.stats()
        stats["schedule"] = sim.schedule()
        return results, stats


def test_error_statuses_and_drops_are_counted_by_kind(tmp_path: Path) -> None:
    sim_yaml = """
ttft: {base_ms: 1}
itl: {base_ms: 1}
faults:
  errors: {503: 0.15, 429: 0.1}
  drop: {rate: 0.2, after_tokens: 2}
"""
    results, stats = _run(tmp_path, sim_yaml, requests=300)
    kinds = results.summary.errors_by_kind
    injected = stats["faults"]
    # Exactly what the simulator injected, the load tester counted, with the right kind.
    assert kinds.get("http_503", 0) == injected["errors_by_status"]["503"] > 0
    assert kinds.get("http_429", 0) == injected["errors_by_status"]["429"] > 0
    assert kinds.get("disconnected", 0) == injected["drop"] > 0
    assert set(kinds) == {"http_503", "http_429", "disconnected"}
    dropped = [r for r in results.requests if r.error_kind == "disconnected"]
    assert all(len(r.chunk_times_ms) == 2 for r in dropped)  # cut after the 2nd token
    ok = [r for r in results.requests if r.ok]
    assert len(ok) == 300 - sum(kinds.values())
    assert all(r.output_tokens == 6 for r in ok)


def test_streams_cut_without_a_finish_reason_are_truncated(tmp_path: Path) -> None:
    """The sim cuts streams as llama-cpp-python does ([DONE], no finish_reason): counted as
    `truncated`, never as successes with fewer tokens."""
    sim_yaml = (
        "ttft: {base_ms: 1}\nitl: {base_ms: 1}\nfaults:\n  truncate: {rate: 0.3, after_tokens: 2}\n"
    )
    results, stats = _run(tmp_path, sim_yaml, requests=60)
    cut = [r for r in results.requests if r.error_kind == "truncated"]
    assert results.summary.errors_by_kind == {"truncated": stats["faults"]["truncate"]}
    assert len(cut) == stats["faults"]["truncate"] > 0
    assert all(len(r.chunk_times_ms) == 2 and r.finish_reason is None for r in cut)
    ok = [r for r in results.requests if r.ok]
    assert ok and all(r.output_tokens == 6 and r.finish_reason == "length" for r in ok)


@pytest.mark.parametrize(
    "fault",
    [
        "stall: {rate: 0.25, after_tokens: 3, duration_ms: 3000}",
        "slow_first_byte: {rate: 0.25, delay_ms: 3000}",
    ],
)
def test_stalls_and_slow_first_bytes_past_the_timeout_count_as_timeouts(
    tmp_path: Path, fault: str
) -> None:
    sim_yaml = f"ttft: {{base_ms: 1}}\nitl: {{base_ms: 1}}\nfaults:\n  {fault}\n"
    results, stats = _run(tmp_path, sim_yaml, requests=48, timeout_s=0.4)
    kind = "stall" if fault.startswith("stall") else "slow_first_byte"
    assert results.summary.errors_by_kind == {"timeout": stats["faults"][kind]}
    assert stats["faults"][kind] > 0
    timed_out = [r for r in results.requests if r.error_kind == "timeout"]
    expected_chunks = 3 if kind == "stall" else 0
    assert all(len(r.chunk_times_ms) == expected_chunks for r in timed_out)


def test_stall_within_the_timeout_shows_as_a_long_inter_token_gap(tmp_path: Path) -> None:
    sim_yaml = """
ttft: {base_ms: 1}
itl: {base_ms: 1}
faults:
  stall: {rate: 0.5, after_tokens: 2, duration_ms: 150}
"""
    results, stats = _run(tmp_path, sim_yaml, requests=40)
    assert results.summary.errors_by_kind == {}
    stalls = stats["faults"]["stall"]
    # the simulator's own schedule: a 150 + 1 ms gap after the second token of each stalled one
    stalled = [p for p in stats["schedule"] if abs(gaps(p)[1] - 0.151) < 1e-6]
    assert len(stalled) == stalls > 0
    assert all(max(gaps(p)) == gaps(p)[1] for p in stalled)
    # the client never sees a stalled answer end sooner than its stall (later is the machine's)
    assert sum(r.e2e_ms >= 150 for r in results.requests) >= stalls

"""What the terminal summary says beyond the numbers: the first error messages of each class,
a warning before the run when requests will not fit the target's context, the scenario's
per-class figures, why each SLO bound failed, and the SLO profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploylab.cli import main
from deploylab.loadtest.library import load_scenario
from deploylab.loadtest.sim import SimThread, parse_config

FAST = """
engine: {max_model_len: 300}
ttft: {base_ms: 2}
itl: {base_ms: 1}
"""


def test_requests_too_long_for_the_target_are_announced_and_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """chat-short asks up to 256 + 128 tokens; a 300-token context refuses some of them."""
    with SimThread(parse_config(FAST, "sim.yaml")) as sim:
        code = main(
            ["loadtest", "-s", "chat-short", "--url", sim.url, "--concurrency", "2",
             "--requests", "12", "--warmup", "0", "--cooldown", "0", "--out", str(tmp_path),
             "--no-progress", "--scrape-interval", "0"]
        )  # fmt: skip
    captured = capsys.readouterr()
    err, out = " ".join(captured.err.split()), " ".join(captured.out.split())
    assert code in (0, 1)  # 1 when every request failed
    assert "need more than the target's max_model_len of 300 tokens" in err  # before the run
    assert "errors: http_400" in out
    assert "http_400: " in out and "max_model_len" in out  # the server's own message
    assert "why: error_rate" in out and "failed with http_400" in out
    # only the error rate failed: the advice is about the errors, not the load
    assert "try next: remove the cause of the errors (see the warning about max_model_len)" in out
    assert '{"error"' not in out  # the server's message, not its JSON


SESSIONS = """\
name: two-turns
description: two-turn sessions
bottleneck: history resend
slo: {ttft_ms: {p99: 1}}
workload:
  kind: sessions
  turns: 2
  first_turn_tokens: 20
  turn_tokens: 4
  output_tokens: 3
  think_time_s: 0.01
"""


def test_the_scenario_point_shows_in_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-turn TTFT for sessions (likewise cold/warm, adapters and document sizes)."""
    (tmp_path / "s.yaml").write_text(SESSIONS)
    with SimThread(parse_config("ttft: {base_ms: 5}\nitl: {base_ms: 1}", "sim.yaml")) as sim:
        code = main(
            ["loadtest", "-s", str(tmp_path / "s.yaml"), "--url", sim.url, "--concurrency",
             "2", "--requests", "8", "--warmup", "0", "--cooldown", "0", "--out",
             str(tmp_path / "out"), "--no-progress", "--scrape-interval", "0"]
        )  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "turn: per turn" in out
    assert "why: ttft p99" in out  # the 1 ms bound failed, and the summary says why
    assert "try next: `deploylab loadtest sweep --scenario two-turns`" in out


def test_slo_profiles_pick_the_bounds_for_the_deployment_class() -> None:
    loaded = load_scenario("chat-short")
    gpu, cpu = loaded.with_slo_profile("gpu"), loaded.with_slo_profile("cpu")
    assert gpu.scenario.slo == loaded.scenario.slo
    assert cpu.slo_profile == "cpu" and cpu.scenario.slo.ttft_ms is not None
    assert gpu.scenario.slo.ttft_ms is not None
    assert cpu.scenario.slo.ttft_ms.max_ms > gpu.scenario.slo.ttft_ms.max_ms


def test_make_run_uses_the_profile_that_fits_the_machine() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert "nvidia-smi" in makefile and "--slo-profile $(SLO_PROFILE)" in makefile

"""Servers we did not write (issue 27): the stub server on loopback plays llama-cpp-python's
quirks — streams cut with [DONE] and no finish_reason, no usage, ignore_eos ignored, a
/v1/models that answers late — and `deploylab loadtest` must count and say what happened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploylab.cli import main
from deploylab.loadtest.target import natural_key

QUIET = ["--no-progress", "--scrape-interval", "0"]


def loadtest(
    stub: Any, out: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str, dict[str, Any]]:
    """Run `deploylab loadtest` in-process; (exit code, stdout, stderr, results.json)."""
    argv = ["loadtest", "--url", stub.url, "--out", str(out), *QUIET, *args]
    if "-s" not in args:
        argv += ["-s", "chat-short"]
    code = main(argv)
    captured = capsys.readouterr()
    path = out / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    return code, " ".join(captured.out.split()), " ".join(captured.err.split()), data


MEASURE_ALL = ["--warmup", "0", "--cooldown", "0"]


def test_a_stream_cut_without_finish_reason_is_truncated_not_a_success(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.configure(tokens=4, truncate_every=3)  # every third answer: one token, then [DONE]
    code, out, _, data = loadtest(
        stub, tmp_path, capsys, "--concurrency", "1", "--requests", "9", *MEASURE_ALL
    )
    assert code == 0
    assert data["summary"]["errors_by_kind"] == {"truncated": 3}
    assert data["summary"]["requests_completed"] == 6
    cut = [r for r in data["requests"] if r["error_kind"] == "truncated"]
    assert all(r["output_tokens"] == 1 and r["finish_reason"] is None for r in cut)
    whole = [r for r in data["requests"] if r["ok"]]
    assert {r["finish_reason"] for r in whole} == {"stop"}  # 4 of max_tokens >= 16
    assert "errors: truncated 3" in out
    assert "truncated: the answer ended without a finish_reason" in out  # its message
    assert "--interrupt_requests False" in out
    report = (tmp_path / "report.html").read_text()
    assert "truncated" in report and "No request failed" not in report


def test_a_server_ignoring_ignore_eos_gives_completed_short_answers_and_one_warning(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """chat-short asks ignore_eos; the stub stops after 0 tokens (finish_reason stop), as
    llama.cpp does when it meets EOS at once. Not errors: completed-short, one warning."""
    stub.configure(tokens=0)
    code, out, _, data = loadtest(
        stub, tmp_path, capsys, "--concurrency", "2", "--requests", "6", *MEASURE_ALL
    )
    assert code == 0
    s = data["summary"]
    assert s["requests_failed"] == 0 and s["error_rate"] == 0.0
    assert s["requests_completed"] == 6 and s["requests_short"] == 6
    assert all(r["completed_short"] and r["finish_reason"] == "stop" for r in data["requests"])
    assert "6 completed, 0 failed (6 of the completed stopped short)" in out
    assert out.count("although the scenario asked ignore_eos") == 1
    assert "the server ignores ignore_eos" in out and "empty_output" not in out


def test_without_ignore_eos_an_early_stop_is_a_normal_answer(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s.yaml").write_text(
        "name: eos\ndescription: d\nbottleneck: b\nrequest: {ignore_eos: false}\n"
        "workload: {kind: synthetic, input_tokens: 8, output_tokens: 16}\n"
    )
    stub.configure(tokens=3)
    code, out, _, data = loadtest(
        stub, tmp_path / "o", capsys, "-s", str(tmp_path / "s.yaml"), "--concurrency", "1",
        "--requests", "3", *MEASURE_ALL,
    )  # fmt: skip
    assert code == 0 and data["summary"]["requests_short"] == 0
    assert "the server ignores ignore_eos" not in out


def test_missing_usage_says_where_token_counts_came_from(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.configure(tokens=5, usage=False)  # as llama-cpp-python: include_usage is ignored
    args = ["--concurrency", "1", "--requests", "3", *MEASURE_ALL]
    code, out, _, data = loadtest(stub, tmp_path / "chunks", capsys, *args)
    assert code == 0
    assert data["summary"]["output_tokens_sources"] == {"chunks": 3}
    assert "output tokens counted from: text chunks 3" in out
    assert "reported no usage for 3 answers and no --tokenizer was given" in out
    stub.configure(usage=True)
    code, out, _, data = loadtest(stub, tmp_path / "usage", capsys, *args)
    assert data["summary"]["output_tokens_sources"] == {"usage": 3}
    assert "counted from" not in out and "no usage" not in out


def test_failures_in_the_warm_up_are_counted_and_nothing_measured_exits_1(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sends at 0, 1, 2, 3 s; the window 2.5-2.6 s holds none of them; two of four fail."""
    stub.configure(tokens=3, fail_every=2)
    code, out, err, data = loadtest(
        stub, tmp_path, capsys, "--rate", "1", "--arrival", "constant", "--duration", "4",
        "--warmup", "2.5", "--cooldown", "1.4",
    )  # fmt: skip
    s = data["summary"]
    n = s["requests_excluded"]
    assert code == 1 and n >= 3
    assert s["requests_completed"] == s["requests_failed"] == 0
    assert s["excluded_failed"] == n // 2 and s["excluded_errors_by_kind"] == {"http_500": n // 2}
    assert f"{n} excluded (warm-up/cool-down), {n // 2} of them failed" in out
    assert f"nothing was measured: all {n} requests were sent in the warm-up or cool-down" in out
    assert "Nothing was measured" in err and "Traceback" not in err
    report = (tmp_path / "report.html").read_text()
    assert "No request failed" not in report and "http_500" in report


def test_a_slow_models_listing_is_busy_not_unreachable(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.configure(models_delay_ms=3000, tokens=2)
    code, _, err, _ = loadtest(stub, tmp_path, capsys, "--check-timeout", "0.5")
    assert code == 1
    assert "accepted the connection but did not answer within 0.5 s" in err
    assert "busy" in err and "--check-timeout" in err and "Cannot reach" not in err
    assert stub.stats()["requests"] == 0
    # going on without the check: the model is named, the run measures
    code, _, err, data = loadtest(
        stub, tmp_path / "on", capsys, "--check-timeout", "0", "--model", "stub-model",
        "--concurrency", "1", "--requests", "2", *MEASURE_ALL,
    )  # fmt: skip
    assert code == 0 and data["summary"]["requests_completed"] == 2
    assert data["target"]["models_served"] is None


def test_throughput_shows_the_whole_run_rate_when_tokens_arrive_after_the_window(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One answer whose 40 tokens all come after the 1.5 s window closes."""
    stub.configure(ttft_ms=2500, tokens=40)
    code, out, _, data = loadtest(
        stub, tmp_path, capsys, "--concurrency", "1", "--duration", "1.5", *MEASURE_ALL
    )
    s = data["summary"]
    assert code == 0 and s["output_tokens_per_s"] == 0.0
    assert s["run_s"] >= 2.5 and s["output_tokens_per_s_run"] == pytest.approx(40 / s["run_s"])
    assert f"(whole run: {s['output_tokens_per_s_run']:.1f} tok/s over" in out
    assert "over the whole run 40 tokens arrived" in out


def test_model_map_hint_names_the_scenario_family_in_natural_order(
    stub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err, _ = loadtest(stub, tmp_path, capsys, "-s", "multi-lora")
    assert code == 2
    assert "does not serve: lora-0, lora-1, lora-2, lora-3" in err
    assert "e.g. 'lora-*=stub-model'" in err and "model-*" not in err
    assert sorted(["m-10", "m-2", "m-1"], key=natural_key) == ["m-1", "m-2", "m-10"]

"""`deploylab loadtest` as a user runs it: a subprocess against a real server on loopback,
every bad input, and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploylab.cli import main
from deploylab.loadtest.local_server import free_port

EXE = str(Path(sys.executable).with_name("deploylab"))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, "loadtest", *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr.replace("\n", " "), result.stderr


def test_run_writes_results_and_prints_the_summary(stub: Any, tmp_path: Path) -> None:
    stub.configure(ttft_ms=5, tokens=4, fail_every=5)
    out = tmp_path / "run"
    result = cli(
        "-s",
        "chat-short",
        "--url",
        stub.url,
        "--rate",
        "30",
        "--requests",
        "15",
        "--warmup",
        "0",
        "--cooldown",
        "0",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["summary"]["requests_completed"] == 12
    assert data["summary"]["errors_by_kind"] == {"http_500": 3}  # counted, the run went on
    assert data["config"]["load"]["rate"] == 30 and data["config"]["mode"] == "open"
    assert "TTFT (service)" in result.stdout and "TTFT (response)" in result.stdout
    assert "goodput" in result.stdout and "SLO verdict" in result.stdout
    assert str(out / "results.json") in result.stdout.replace("\n", "")


def test_scenarios_command_lists_every_builtin() -> None:
    result = subprocess.run(
        [EXE, "loadtest", "scenarios"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for name in ("chat-short", "rag", "interactive-long", "multi-model-rare", "multi-lora"):
        assert name in result.stdout


def test_unknown_scenario_lists_the_known_ones(tmp_path: Path) -> None:
    result = cli("-s", "chat-long", "--out", str(tmp_path))
    assert_clean_error(result, 2, "Unknown scenario 'chat-long'", "chat-short", "multi-lora")


def test_malformed_scenario_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ndescription: d\nbottleneck: b\nworkload:\n  kind: synthetic\n"
        "  input_tokens: -5\n  output_tokens: 3\n"
    )
    result = cli("-s", str(bad), "--out", str(tmp_path))
    assert_clean_error(result, 2, f"{bad}:6: workload.input_tokens")


def test_malformed_trace_names_file_and_line(stub: Any, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_tokens": 5}\n{"timestamp": "soon"}\n')
    result = cli("-s", "replay", "--url", stub.url, "--trace", str(trace), "--out", str(tmp_path))
    assert_clean_error(result, 2, f"{trace}:2:")


def test_unreachable_target_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("-s", "chat-short", "--url", url, "--out", str(tmp_path))
    assert_clean_error(result, 1, f"Cannot reach the target at {url}/v1/models")


def test_missing_models_fail_fast(stub: Any, tmp_path: Path) -> None:
    result = cli("-s", "multi-lora", "--url", stub.url, "--out", str(tmp_path))
    assert_clean_error(result, 2, "does not serve: lora-0", "--model-map")
    assert stub.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "2", "--concurrency", "3"], "Give --rate or --concurrency, not both"),
        (["--duration", "5", "--requests", "3"], "Give --duration or --requests, not both"),
        (["--rate", "-1"], "rate: Input should be greater than 0"),
        (["--duration", "4", "--warmup", "3", "--cooldown", "2"], "nothing of the 4 s run"),
        (["--duration", "4", "--warmup", "3", "--cooldown", "2"], "lower --warmup and --cooldown"),
        (["--duration", "30", "--ramp-up", "45"], "lower --ramp-up"),
        (["--slo-profile", "tpu"], "has no SLO profile 'tpu'; it has: default, gpu, cpu"),
        (["--arrival", "bursty"], "--arrival 'bursty' is not one of"),
        (["--model-map", "nonsense"], "is not FROM=TO"),
        (["--check-timeout", "-1"], "--check-timeout -1 must be 0 (skip the check) or positive"),
        (["--concurrency", "2", "--workers", "3"], "--workers 3 exceeds --concurrency 2"),
        (["--tokenizer", "no-such-tokenizer"], "Unknown tokenizer 'no-such-tokenizer'"),
        (["--trace", "x.jsonl"], "--trace applies to replay scenarios"),
    ],
)
def test_bad_options(
    stub: Any, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # in-process (the same entry point as the console script) to keep the suite fast
    argv = ["loadtest", "-s", "chat-short", "--url", stub.url, "--out", str(tmp_path), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err
    assert stub.stats()["requests"] == 0


def test_out_is_required() -> None:
    assert_clean_error(cli("-s", "chat-short"), 2, "Give --out DIR")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_saves_partial_results(stub: Any, tmp_path: Path, workers: str) -> None:
    stub.configure(ttft_ms=100, itl_ms=100, tokens=50)  # each answer takes ~5 s
    out = tmp_path / "partial"
    proc = subprocess.Popen(
        [
            EXE,
            "loadtest",
            "-s",
            "chat-short",
            "--url",
            stub.url,
            "--rate",
            "20",
            "--duration",
            "60",
            "--warmup",
            "0",
            "--cooldown",
            "0",
            "--workers",
            workers,
            "--out",
            str(out),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while stub.stats()["requests"] < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    data = json.loads((out / "results.json").read_text())
    assert data["interrupted"] is True
    assert data["summary"]["requests_cancelled"] >= 5
    assert data["summary"]["requests_failed"] == 0  # cancelled requests are not failures
    # the window ends at the interruption, not at the planned 60 s
    lo, hi = data["summary"]["window_s"]
    # (and reaches every request in the results, also one a worker sent before it saw the
    # stop; results.json keeps times to the microsecond)
    assert hi < 50 and hi >= max(r["scheduled_s"] for r in data["requests"]) - 1e-6
    assert "interrupted" in stdout

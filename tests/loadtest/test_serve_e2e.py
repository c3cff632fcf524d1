"""The loop that makes deploylab one product: `deploylab loadtest` without --url starts
`deploylab serve` on the real default model, runs a scenario against it, and stops it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("deploylab"))

TINY = """\
name: tiny-chat
description: a few short chat requests
bottleneck: decode speed
slo: {ttft_ms: {p99: 60000}}
workload:
  kind: synthetic
  input_tokens: 24
  output_tokens: 6
"""


@pytest.mark.slow
def test_loadtest_without_url_serves_the_default_model(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "run"
    result = subprocess.run(
        [
            EXE,
            "loadtest",
            "-s",
            str(scenario),
            "--requests",
            "3",
            "--concurrency",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr + (out / "server.log").read_text()
    data = json.loads((out / "results.json").read_text())
    target = data["target"]
    assert target["started_locally"] is True
    assert target["server_command"][2:5] == ["deploylab", "serve", "--port"]
    assert data["config"]["tokenizer"] == "smollm2-135m-instruct"
    assert data["config"]["exact_token_counts"] is True
    assert data["summary"]["requests_completed"] == 3
    for rec in data["requests"]:
        assert rec["ok"] and rec["ttft_ms"] > 0 and len(rec["chunk_times_ms"]) >= 1
        # ignore_eos asks for exactly max_tokens; the server reports usage
        assert rec["output_tokens_source"] == "usage" and rec["output_tokens"] == 6
        # exact prompt length: 24 content tokens plus the chat template's own tokens
        assert rec["input_tokens_source"] == "usage" and 24 < rec["input_tokens"] < 60
    # the server was stopped afterwards
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(target["url"] + "/health", timeout=2)


MANY = """\
name: tiny-many-models
description: four models behind one endpoint, two resident at a time
bottleneck: cold starts
slo: {ttft_ms: {p99: 120000}}
workload:
  kind: multi-model
  models: {names: [alpha, beta, gamma, delta]}
  zipf_exponent: 0
  input_tokens: 24
  output_tokens: 4
"""


@pytest.mark.slow
def test_multi_model_scenario_serves_every_name_and_reports_cold_starts(tmp_path: Path) -> None:
    scenario = tmp_path / "many.yaml"
    scenario.write_text(MANY)
    out = tmp_path / "run"
    result = subprocess.run(
        [EXE, "loadtest", "-s", str(scenario), "--requests", "6", "--concurrency", "2",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + (out / "server.log").read_text()
    data = json.loads((out / "results.json").read_text())
    command = data["target"]["server_command"]
    assert command.count("--served-model-name") == 4 and "--max-resident-models" in command
    assert data["summary"]["requests_completed"] == 6
    states = {rec["classes"]["model_state"] for rec in data["requests"]}
    assert {rec["model"] for rec in data["requests"]} <= {"alpha", "beta", "gamma", "delta"}
    assert "resident" in states and states & {"unloaded", "waking"}  # cold starts happened
    assert "model_state" in data["summary"]["classes"]
    assert "model_state: by the model's state on arrival" in result.stdout + result.stderr

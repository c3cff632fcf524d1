"""`deploylab sim` as a user runs it: a real process serving on a port until Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path


def test_cli_serves_the_configured_model_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("preset: small-gpu\nmodels:\n  - {name: my-model}\nttft: {base_ms: 1}\n")
    exe = Path(sys.executable).with_name("deploylab")
    proc = subprocess.Popen(
        [str(exe), "sim", "--config", str(config), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background (`cmd &`, nohup) passes
        # SIGINT down ignored, and Python then never raises KeyboardInterrupt (a 60 s hang).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}"
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
            assert [m["id"] for m in json.load(resp)["data"]] == ["my-model"]
        request = urllib.request.Request(
            url + "/v1/completions",
            data=json.dumps({"prompt": "hi", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] <= 3
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)  # a hang guard, not a speed check
    assert code == 130


def test_show_config_prints_the_effective_yaml() -> None:
    exe = Path(sys.executable).with_name("deploylab")
    out = subprocess.run(
        [str(exe), "sim", "--preset", "large-gpu", "--show-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "kv_capacity_tokens: 1200000" in out.stdout

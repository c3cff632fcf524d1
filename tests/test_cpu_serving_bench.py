"""benchmarks/cpu_serving.py's pure parts: AMX detection, the loadtest command, the summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cpu_serving import build_servers, cpu_has_amx, loadtest_cmd, summarize  # noqa: E402


def test_amx_is_read_from_the_flags_line() -> None:
    assert cpu_has_amx("processor: 0\nflags\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_amx("processor: 0\nflags\t: fpu avx512f avx512_bf16\n")
    assert not cpu_has_amx("processor: 0\n")


def test_sides_and_commands(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("cpu_serving.cpu_has_amx", lambda: True)
    args = argparse.Namespace(
        out=tmp_path, quantization=["int4", "none"], main_src=tmp_path, llama_threads=[1],
        scenario="chat-short", duration=5.0, warmup=0.0, cpu_compile=True, head4=True,
        llama_pythonpath="/opt/llama",
    )  # fmt: skip
    servers = build_servers(args, tmp_path / "m.gguf")
    names = [s.name for s in servers]
    assert names == [
        "deploylab-int4", "deploylab-none", "deploylab-int4-compiled",
        "deploylab-int4-compiled-head4", "deploylab-main", "llama.cpp-t1",
    ]  # fmt: skip
    compiled = servers[2]
    assert compiled.cmd[-3:] == ["--quantization", "int4", "--cpu-compile"]
    assert servers[3].cmd[-3:] == ["--cpu-compile", "--lm-head-quantization", "int4"]
    assert "--cpu-compile" not in servers[0].cmd
    assert "OMP_WAIT_POLICY" not in servers[4].env  # main's server as users start it
    assert servers[4].env["PYTHONPATH"] == str(tmp_path)
    llama = servers[5]
    assert llama.env["PYTHONPATH"] == "/opt/llama"  # llama-cpp-python installed beside the venv
    assert llama.cmd[1] == "-c" and "use_extra_bufts = False" in llama.cmd[2]  # AMX: off
    assert llama.env["OMP_WAIT_POLICY"] == "PASSIVE"
    cmd = loadtest_cmd(llama.url, tmp_path / "o", 8, args)
    assert cmd[cmd.index("--concurrency") + 1] == "8" and llama.url in cmd


def test_summary_of_a_results_file() -> None:
    stats = {"p50": 10.0, "p90": 20.0}
    results = {
        "summary": {
            "requests_completed": 3, "requests_failed": 0, "output_tokens_per_s": 12.5,
            "ttft_ms": stats, "itl_ms": stats, "e2e_ms": stats,
        }
    }  # fmt: skip
    row = summarize(results)
    assert row["output_tok_s"] == 12.5 and row["itl_p50_ms"] == 10.0 and row["completed"] == 3

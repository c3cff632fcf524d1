"""`deploylab armt bench | run | schedule` on tiny shapes on the CPU, and bad inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deploylab.armt.bench import BenchSettings, run_bench, speedups
from deploylab.armt.config import ARMTConfig
from deploylab.cli import main

TINY_BENCH = [
    "--model-shape",
    "tiny",
    "--segment",
    "16",
    "--memory-tokens",
    "4",
    "--d-mem",
    "8",
    "--device",
    "cpu",
    "--repeats",
    "1",
    "--warmup",
    "0",
]


def test_run_bench_rows_steps_and_speedups() -> None:
    settings = BenchSettings(
        shape="tiny",
        contexts=(40, 64),
        armt=ARMTConfig(16, 4, 8, w_mv_init="normal"),
        device=torch.device("cpu"),
        dtype=torch.float32,
        repeats=2,
        warmup=1,
    )
    seen = []
    rows = run_bench(settings, on_row=seen.append)
    assert rows == seen
    assert [(r.context, r.method) for r in rows] == [
        (c, m) for c in (40, 64) for m in ("full", "sequential", "diagonal")
    ]
    layers = 2  # the "tiny" preset
    for r in rows:
        assert r.seconds is not None and r.seconds > 0 and len(r.all_seconds) == 2
        assert r.note == "" and r.peak_gib is None  # no allocator statistics on the CPU
    by = {(r.context, r.method): r for r in rows}
    assert by[(40, "sequential")].steps == layers * 3
    assert by[(40, "diagonal")].steps == layers + 3 - 1
    ups = speedups(rows)
    assert set(ups) == {(c, k) for c in (40, 64) for k in ("vs full", "vs sequential")}
    assert ups[(64, "vs full")] == pytest.approx(
        by[(64, "full")].seconds / by[(64, "diagonal")].seconds  # type: ignore[operator]
    )


def test_cli_bench_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main(["armt", "bench", *TINY_BENCH, "--context", "32,48", "--output", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for label in (
        "Llama, full attention (SDPA)",
        "ARMT, sequential",
        "ARMT, diagonal batching",
        "vs sequential",
        "tokens/s",
        "peak GiB",
    ):
        assert label in text
    record = json.loads(out.read_text())
    assert record["shape"] == "tiny" and record["segment"] == 16
    assert record["command"].startswith("deploylab armt bench --model-shape tiny --context 32,48")
    assert len(record["rows"]) == 6
    assert all(r["seconds"] > 0 for r in record["rows"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-shape", "llama-9"], "Unknown model shape 'llama-9'. Known shapes:"),
        (["--context", "0"], "Bad context length '0'"),
        (["--context", "12,abc"], "Bad context length 'abc'"),
        (["--context", ","], "--context is empty"),
        (["--segment", "0"], "segment_size must be an integer >= 1"),
        (["--memory-tokens", "-3"], "num_mem_tokens must be an integer >= 1"),
        (["--d-mem", "0"], "d_mem must be an integer >= 1"),
        (["--device", "tpu"], "Use auto, cpu, cuda or cuda:N"),
        (["--dtype", "int8"], "Unknown dtype 'int8'"),
        (["--methods", "full,magic"], "Unknown method(s) ['magic']"),
        (["--grouped-backend", "cutlass"], "Unknown grouped-GEMM backend 'cutlass'"),
        (["--repeats", "0"], "repeats must be >= 1"),
    ],
)
def test_cli_bench_bad_inputs(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["armt", "bench", *TINY_BENCH, "--context", "16", *args])
    assert code == 2
    assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cli_bench_cuda_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["armt", "bench", "--model-shape", "tiny", "--device", "cuda"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_console_command_reports_unknown_shape_without_traceback() -> None:
    exe = Path(sys.executable).with_name("deploylab")
    res = subprocess.run(
        [str(exe), "armt", "bench", "--model-shape", "gpt-5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "Unknown model shape 'gpt-5'" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["armt", "schedule", "--layers", "2", "--segments", "3"]) == 0
    out = capsys.readouterr().out
    assert "| L1 | 1 | 2 | 3 |" in out and "4 grouped steps instead of 6" in out
    assert main(["armt", "schedule", "--layers", "0"]) == 2


def test_cli_run_reads_text_with_both_executors(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = " ".join(["the cat sat on a mat and the dog ran to the big red house"] * 3)
    code = main(
        [
            "armt",
            "run",
            "--model",
            str(tiny_checkpoint),
            "--text",
            text,
            "--segment",
            "8",
            "--memory-tokens",
            "2",
            "--d-mem",
            "4",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "45 tokens" in out  # 15 words x 3, one token each
    # 6 segments of <= 8 tokens; steps: 3 x 6 layer calls, or 3 + 6 - 1 diagonals
    assert re.search(r"diagonal\s*│\s*6\s*│\s*8\s*│", out)
    assert re.search(r"sequential\s*│\s*6\s*│\s*18\s*│", out)
    diff = float(out.split("diagonal vs sequential:")[1].split()[0])
    assert diff < 1e-3


def test_cli_run_bad_inputs(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["armt", "run", "--model", str(tiny_checkpoint), "--device", "cpu"]
    cases = [
        ([], "exactly one of --text or --file"),
        (["--text", "a", "--file", "x.txt"], "exactly one of --text or --file"),
        (["--file", str(tmp_path / "none.txt")], "does not exist"),
        (["--text", "   "], "The input text is empty"),
        (["--text", "the cat", "--executor", "parallel"], "Unknown executor 'parallel'"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    bare = tmp_path / "bare"
    from .conftest import write_hf_checkpoint

    write_hf_checkpoint(bare)
    assert main(["armt", "run", "--model", str(bare), "--text", "the cat"]) == 2
    assert "no tokenizer" in capsys.readouterr().err

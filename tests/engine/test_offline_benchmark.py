"""`benchmarks/offline_throughput.py` end to end on a tiny random model: both sides produce
every requested token, several transformers batch sizes give one row each, and --hf-sort
reorders only what transformers gets."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "offline_throughput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("offline_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_several_hf_batch_sizes_sorted(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = ["--random-weights", "tiny", "--num-requests", "6", "--min-len", "4"]
    argv += ["--max-len", "12", "--max-num-seqs", "4", "--threads", "1"]
    argv += ["--hf-batch-size", "2", "6", "--hf-sort", "--json", str(out)]
    assert bench.main(argv) == 0
    payload = json.loads(out.read_text())
    names = [r["name"] for r in payload["results"]]
    assert names == ["deploylab", "hf batch 2 sorted", "hf batch 6 sorted"]
    outputs = {r["output_tokens"] for r in payload["results"]}
    assert len(outputs) == 1 and outputs.pop() >= 6 * 4


def test_hf_sort_orders_by_output_then_input(bench: ModuleType) -> None:
    args = bench.parse_args(["--num-requests", "20", "--min-len", "1", "--max-len", "9"])
    reqs = bench.make_requests(args, vocab=1000)
    ordered = bench.hf_order(reqs, sort=True)
    keys = [(n, len(p)) for p, n in ordered]
    assert keys == sorted(keys) and sorted(map(str, ordered)) == sorted(map(str, reqs))
    assert bench.hf_order(reqs, sort=False) == reqs

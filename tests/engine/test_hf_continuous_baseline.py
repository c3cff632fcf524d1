"""`benchmarks/hf_baselines.py` continuous batching baseline on a tiny random Llama (CPU): every
request gets exactly its own number of tokens, the same ones greedy `generate` gives, with
few sequences per batch and chunked prefill; a missed deadline stops the manager's thread and
says how far it got; bad options are refused."""

from __future__ import annotations

import importlib.util
import random
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest
import torch

from deploylab.errors import UsageError

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    _load("offline_throughput")  # hf_baselines takes `Result` from it
    return _load("hf_baselines")


@pytest.fixture(scope="module")
def hf(bench: ModuleType) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    if not bench.continuous_batching_available(model):
        pytest.skip(f"transformers {transformers.__version__} has no continuous batching")
    return model


@pytest.fixture(scope="module")
def reqs() -> list[tuple[list[int], int]]:
    rng = random.Random(0)
    return [
        ([rng.randrange(100, 1000) for _ in range(rng.randint(4, 40))], rng.randint(3, 30))
        for _ in range(6)
    ]


def test_exact_counts_and_greedy_tokens(
    bench: ModuleType, hf: torch.nn.Module, reqs: list[tuple[list[int], int]]
) -> None:
    seconds, outputs = bench.generate_continuous(
        hf, reqs, max_requests_per_batch=2, max_batch_tokens=32
    )
    assert seconds > 0
    assert [len(t) for t in outputs] == [n for _, n in reqs]
    for (prompt, n), tokens in zip(reqs, outputs, strict=True):
        with torch.inference_mode():
            ref = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert ref[0, len(prompt) :].tolist() == tokens
    result = bench.run_hf_continuous(hf, reqs, max_requests_per_batch=3)
    assert result.name == "hf continuous 3 seqs"
    assert result.output_tokens == sum(n for _, n in reqs)


def test_missed_deadline_stops_the_thread_and_says_how_far(
    bench: ModuleType, hf: torch.nn.Module, reqs: list[tuple[list[int], int]]
) -> None:
    threads = threading.active_count()
    attn = hf.config._attn_implementation
    with pytest.raises(RuntimeError, match=r"deadline of 0 s passed.*0/6 requests finished"):
        bench.generate_continuous(hf, reqs, deadline_s=0.0)
    assert threading.active_count() == threads
    assert hf.config._attn_implementation == attn


def test_unknown_option_is_refused(
    bench: ModuleType, hf: torch.nn.Module, reqs: list[tuple[list[int], int]]
) -> None:
    with pytest.raises(UsageError, match="unknown continuous batching option 'max_seqs'"):
        bench.generate_continuous(hf, reqs, options={"max_seqs": 4})


def test_cb_options_parse_json_values(bench: ModuleType) -> None:
    parse = sys.modules["offline_throughput"].cb_options
    pairs = ["use_cuda_graph=true", "default_compile_level=1", "scheduler_type=prefill_first"]
    assert parse(pairs) == {
        "use_cuda_graph": True,
        "default_compile_level": 1,
        "scheduler_type": "prefill_first",
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse(["use_cuda_graph"])

"""Sleep mode at fixed addresses: a wake maps memory back under the same tensors (weights and
KV cache), output stays token-identical, memory is really released; on CUDA the captured
graphs are kept."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch

from deploylab.engine.config import EngineConfig
from deploylab.engine.llm_engine import LLMEngine
from deploylab.engine.models.loader import load_model
from deploylab.engine.vmm import VirtualArena

# The same greedy request and RSS probe as the moving sleep's tests.
from .test_sleep import PROMPT, _generate, _rss


def _addresses(engine: LLMEngine) -> list[int]:
    kv = [t.data_ptr() for pair in engine.kv_cache.layers for t in pair]
    return [p.data_ptr() for p in engine.model.parameters()] + kv


def test_host_arena_releases_and_keeps_its_address() -> None:
    arena = VirtualArena(8 << 20, torch.device("cpu"))
    ptr = arena.tensor.data_ptr()
    arena.tensor.fill_(7)
    rss = _rss()
    arena.release()
    assert rss - _rss() > (8 << 20) // 2  # the pages went back
    arena.restore()
    assert arena.tensor.data_ptr() == ptr
    assert int(arena.tensor.count_nonzero()) == 0  # new memory, no old content
    arena.tensor[:16].fill_(3)
    assert int(arena.tensor[:16].sum()) == 48


@pytest.fixture(scope="module")
def sleep_mode_engine(smol: Any) -> LLMEngine:  # conftest.ModelParts
    # Its own weights (sleep mode moves them into an arena); a fresh load, as the shared
    # model's linears may be oneDNN-prepacked by other engines (not deep-copyable).
    model, _ = load_model(smol.path, torch.float32, torch.device("cpu"))
    return LLMEngine(
        EngineConfig(model=str(smol.path), kv_cache_gib=0.05, num_threads=1, max_num_seqs=4,
                     enable_sleep_mode=True),
        model=model, tokenizer=smol.tokenizer,
    )  # fmt: skip


def _check_sleep_wake(engine: LLMEngine, level: int, prompt: str | list[int]) -> list[int]:
    """Sleep and wake at `level`: memory released, same addresses, same output (returned)."""
    assert engine.sleeper.fixed_addresses
    before = _generate(engine, f"before-{level}", prompt)
    addresses = _addresses(engine)
    weights, kv = engine.sleeper.weight_bytes(), engine.sleeper.kv_bytes()
    rss = _rss()
    report = engine.sleep(level)
    freed = rss - _rss() + engine.sleeper.host_bytes()  # level 1 keeps a host copy
    assert freed > weights + kv // 2  # the arenas' memory really went back
    assert engine.sleeper.weight_bytes() == 0 and engine.sleeper.kv_bytes() == 0
    assert report.bytes_moved == (weights if level == 1 else 0)
    assert engine.sleeper.host_bytes() == (weights if level == 1 else 0)
    wake = engine.wake_up()
    assert wake.level == level and wake.bytes_moved >= weights // 2
    assert wake.graphs_seconds == 0.0 and engine.sleeper.host_bytes() == 0
    assert _addresses(engine) == addresses  # the same tensors at the same addresses
    assert engine.sleeper.weight_bytes() == weights
    after = _generate(engine, f"after-{level}", prompt)
    assert after == before
    return after


def test_real_model_fixed_addresses_token_identical(sleep_mode_engine: LLMEngine) -> None:
    after = _check_sleep_wake(sleep_mode_engine, 1, PROMPT)
    assert sleep_mode_engine.tokenizer.decode(after).startswith("The capital of France is Paris")


def test_level2_fixed_addresses_redraws_into_the_same_tensors() -> None:
    engine = LLMEngine(
        random_weights="tiny", seed=7, kv_cache_gib=0.01, num_threads=1, enable_sleep_mode=True
    )
    _check_sleep_wake(engine, 2, [5, 17, 33, 9, 100])
    _check_sleep_wake(engine, 1, [5, 17, 33, 9, 100])  # and a level-1 cycle after it


@pytest.mark.gpu
def test_cuda_arena_remaps_at_the_same_address() -> None:
    device = torch.device("cuda")
    arena = VirtualArena(64 << 20, device)
    ptr = arena.tensor.data_ptr()
    arena.tensor.fill_(5)
    free_before, _ = torch.cuda.mem_get_info(device)
    arena.release()
    free_asleep, _ = torch.cuda.mem_get_info(device)
    assert free_asleep - free_before >= 32 << 20
    arena.restore()
    assert arena.tensor.data_ptr() == ptr
    arena.tensor.fill_(9)
    assert int(arena.tensor[:1024].sum()) == 9 * 1024


@pytest.mark.gpu
@pytest.mark.parametrize("level", [1, 2])
def test_cuda_wake_keeps_graphs(level: int) -> None:
    gc.collect()  # engines of earlier tests give their device memory back
    torch.cuda.empty_cache()
    engine = LLMEngine(
        random_weights="smollm2-135m", device="cuda", dtype="bfloat16",
        gpu_memory_utilization=0.3, max_num_seqs=8, max_model_len=1024, enable_sleep_mode=True,
    )  # fmt: skip
    assert engine.sleeper.fixed_addresses and engine.runner.graphs is not None
    prompt = list(range(10, 40))
    before = _generate(engine, "a", prompt)
    graphs, addresses = engine.runner.graphs, _addresses(engine)
    kv = engine.sleeper.kv_bytes()
    free_awake, _ = torch.cuda.mem_get_info()
    engine.sleep(level)
    free_asleep, _ = torch.cuda.mem_get_info()
    assert free_asleep - free_awake >= kv // 2  # the KV cache's memory went back
    report = engine.wake_up()
    assert engine.runner.graphs is graphs and report.graphs_seconds == 0.0
    assert _addresses(engine) == addresses
    # The device clock's phases end within the wake (the copy only at level 1).
    assert report.zero_seconds is not None and 0 < report.zero_seconds <= report.seconds
    if level == 1:
        assert report.copy_seconds is not None and 0 < report.copy_seconds <= report.seconds
    else:
        assert report.copy_seconds is None
    assert _generate(engine, "b", prompt) == before

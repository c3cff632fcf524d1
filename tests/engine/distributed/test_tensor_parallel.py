"""Tensor parallelism on the CPU (gloo, two processes): TP 2 greedy output equals TP 1's for
the default model and a tiny Qwen3; a rank that dies fails the engine fast and clearly."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.engine.conftest import ModelParts
from tests.tiny_qwen3 import save_tiny_qwen3

from deploylab.engine import LLM, EngineConfig, LLMEngine
from deploylab.engine.async_engine import AsyncEngine, EngineDeadError
from deploylab.engine.distributed import TensorParallelError
from deploylab.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
SETTINGS: dict[str, Any] = {"device": "cpu", "dtype": "float32", "num_threads": 1}


def _ids(llm: LLM, prompts: list[Any]) -> list[list[int]]:
    return [out.token_ids for out in llm.generate(prompts, GREEDY)]


def _close(llm: LLM) -> None:
    tp = llm.llm_engine.tp
    assert tp is not None
    tp.close()


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen3(tmp_path_factory.mktemp("qwen3-tiny"))


def test_default_model_tp2_matches_tp1(smol: ModelParts, smol_chat_ids: list[list[int]]) -> None:
    """SmolLM2-135M (9 query / 3 KV heads: ranks hold 2 and 1 KV heads)."""
    prompts = [*smol_chat_ids[:2], "The capital of France is"]
    expected = _ids(smol.llm(kv_cache_gib=0.05), prompts)
    two = LLM(kv_cache_gib=0.05, tensor_parallel_size=2, **SETTINGS)
    try:
        assert two.llm_engine.kv_cache.layers[0][0].shape[0] == 2  # rank 0's KV heads
        assert _ids(two, prompts) == expected
        chat = two.chat([{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in chat[0].text
    finally:
        _close(two)


def _extras(llm: LLM) -> tuple[list[list[int]], list[float]]:
    """Two greedy samples of one prompt (fork, copy-on-write) and its prompt logprobs."""
    params = SamplingParams(temperature=0.0, max_tokens=6, n=2, prompt_logprobs=1)
    outs = llm.generate([[9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11]], params)
    lps = outs[0].prompt_logprobs or []
    return [o.token_ids for o in outs], [lp.logprob for lp in lps if lp is not None]


def test_tiny_qwen3_tp2_matches_tp1(qwen3_dir: Path) -> None:
    """Also `n` samples (forked blocks) and prompt logprobs: every rank computes the same
    rows, so the LM head's all-gather stays matched."""
    prompts = [[5, 17, 33, 2, 90, 100], [7] * 40, [1, 2, 3]]
    settings = {**SETTINGS, "model": str(qwen3_dir), "kv_cache_gib": 0.01, "block_size": 8}
    one = LLM(**settings)
    expected, (samples, logprobs) = _ids(one, prompts), _extras(one)
    two = LLM(tensor_parallel_size=2, **settings)
    try:
        # The graph handshake (every rank captures, kept only if all did): the CPU has no
        # graphs, so both ranks decline, agree, and keep stepping eagerly in lockstep.
        assert two.llm_engine.runner.enable_cuda_graphs(8, 64) is False
        assert _ids(two, prompts) == expected
        samples2, logprobs2 = _extras(two)
        assert samples2 == samples and len(samples) == 2
        assert len(logprobs) == 10 and logprobs2 == pytest.approx(logprobs, abs=1e-4)
    finally:
        _close(two)


def test_the_tp_executor_at_size_one_matches_the_plain_engine(qwen3_dir: Path) -> None:
    """`distributed_executor_backend="mp"` at size 1: parallel layers over a one-rank group
    (no worker process), the same greedy tokens."""
    settings = {**SETTINGS, "model": str(qwen3_dir), "kv_cache_gib": 0.01}
    prompts = [[5, 17, 33, 2, 90, 100], [1, 2, 3]]
    expected = _ids(LLM(**settings), prompts)
    one = LLM(distributed_executor_backend="mp", **settings)
    try:
        assert one.llm_engine.tp is not None and not one.llm_engine.tp.procs
        assert _ids(one, prompts) == expected
    finally:
        _close(one)


def test_an_engine_that_fails_to_build_leaves_the_group(qwen3_dir: Path) -> None:
    """A config error after the ranks started (context too long for the cache) frees the
    process group, so the next engine in this process can start."""
    from deploylab.errors import ConfigError

    settings = {**SETTINGS, "model": str(qwen3_dir), "kv_cache_gib": 0.01}
    with pytest.raises(ConfigError, match="max_model_len"):
        LLM(distributed_executor_backend="mp", max_model_len=10**6, **settings)
    one = LLM(distributed_executor_backend="mp", **settings)
    _close(one)


def test_a_dead_rank_fails_the_engine_fast(qwen3_dir: Path) -> None:
    """Kill rank 1: the next request fails with an error naming the rank, the engine is
    declared dead (no retries, no hang), and later requests are refused at once."""
    config = EngineConfig(
        model=str(qwen3_dir), kv_cache_gib=0.01, tensor_parallel_size=2, **SETTINGS
    )
    engine = LLMEngine(config)
    tp = engine.tp
    assert tp is not None
    async_engine = AsyncEngine(engine=engine)

    async def run(prompt: list[int]) -> list[int]:
        tokens: list[int] = []
        async for delta in async_engine.generate(prompt, GREEDY):
            tokens += delta.new_token_ids
        return tokens

    try:
        assert len(asyncio.run(run([1, 2, 3]))) == GREEDY.max_tokens
        worker = tp.procs[0]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=30)
        with pytest.raises((EngineDeadError, TensorParallelError), match="rank 1"):
            asyncio.run(run([4, 5, 6]))
        assert async_engine.dead_reason is not None and "rank 1" in async_engine.dead_reason
        with pytest.raises(EngineDeadError):
            asyncio.run(run([7, 8]))
    finally:
        async_engine.shutdown()
        tp.close()


@pytest.mark.gpu
def test_tp_executor_captures_cuda_graphs_with_the_all_reduce(qwen3_dir: Path) -> None:
    """CUDA, the TP executor at size 1 over NCCL: decode steps replay graphs that hold the
    all-reduces, with the plain engine's greedy tokens."""
    settings = {"model": str(qwen3_dir), "device": "cuda", "dtype": "bfloat16"}  # Triton decode
    settings |= {"gpu_memory_utilization": 0.2}
    prompts = [[5, 17, 33, 2, 90, 100], [1, 2, 3], [7] * 40]
    expected = _ids(LLM(**settings), prompts)
    gc.collect()  # the next engine sizes its KV cache from what this one leaves free
    torch.cuda.empty_cache()
    one = LLM(distributed_executor_backend="mp", **settings)
    try:
        assert one.llm_engine.runner.graphs is not None
        assert _ids(one, prompts) == expected
    finally:
        _close(one)

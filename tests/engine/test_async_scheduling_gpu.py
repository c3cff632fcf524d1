"""Async scheduling on CUDA: pinned uploads that never wait, and the same tokens as the
synchronous engine with CUDA graphs and the Triton kernels (random weights, bf16)."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine import LLM, SamplingParams
from deploylab.engine.async_step import HostStager

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_host_stager_keeps_every_upload_intact() -> None:
    stager = HostStager(torch.device("cuda"), slots=3)
    big = torch.randn(4096, 4096, device="cuda")
    sources, outs = [], []
    for i in range(40):
        _ = big @ big  # keep the stream busy so uploads queue behind work
        src = torch.arange(i * 1000, i * 1000 + 50 * (i + 1), dtype=torch.int64)
        sources.append(src.clone())
        outs.append(stager.upload(src))
        src.fill_(-1)  # the caller may reuse its host memory at once
    torch.cuda.synchronize()
    for want, got in zip(sources, outs, strict=True):
        assert torch.equal(got.cpu(), want)


def test_async_scheduling_is_the_default_on_cuda() -> None:
    llm = LLM(random_weights="tiny", device="cuda", max_model_len=128, gpu_memory_utilization=0.1)
    assert llm.llm_engine.overlap is not None
    del llm
    torch.cuda.empty_cache()


def test_async_tokens_equal_sync_tokens_on_cuda() -> None:
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 500, (5 + 7 * i,), generator=gen).tolist() for i in range(12)]
    params = [
        SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True) for i in range(6)
    ] + [SamplingParams(temperature=0.8, seed=i, max_tokens=20, ignore_eos=True) for i in range(6)]
    outs = {}
    for on in (False, True):
        llm = LLM(
            random_weights="tiny", device="cuda", dtype="bfloat16", max_num_seqs=8,
            max_model_len=256, gpu_memory_utilization=0.15, async_scheduling=on,
        )  # fmt: skip
        outs[on] = [o.token_ids for o in llm.generate(prompts, params)]
        engine = llm.llm_engine
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        del llm, engine  # freed at once (no cycle keeps an engine alive)
        torch.cuda.empty_cache()
    assert outs[True] == outs[False]

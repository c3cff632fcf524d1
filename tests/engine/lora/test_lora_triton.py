"""The Triton BGMV/SGMV kernels against a plain torch reference (CUDA, or on the CPU with
TRITON_INTERPRET=1; skipped where Triton is not installed)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch

triton = pytest.importorskip("triton")
if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from deploylab.engine.lora.triton_ops import LoraKernels  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("column_slice", [False, True])
def test_kernels_match_torch(column_slice: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    k, n, r, slots = 24, 40, 16, 3
    a = torch.randn(slots, r, k, generator=gen)
    b = torch.randn(slots, n, r, generator=gen)
    a[1, 8:] = 0  # slot 1 holds a rank-8 adapter
    b[1, :, 8:] = 0
    decode_slots = [2, -1, 0, 2]
    segments = [(4, 5, 1), (12, 20, 0)]  # rows 9..11 are a base-model chunk
    rows = 32
    x = torch.randn(rows, k, generator=gen)
    wide = torch.randn(rows, n + 8, generator=gen)
    y = wide[:, 8:] if column_slice else wide[:, :n].contiguous()
    row_slots = decode_slots + [1] * 5 + [-1] * 3 + [0] * 20
    expected = y.clone()
    for i, s in enumerate(row_slots):
        if s >= 0:
            expected[i] += (x[i] @ a[s].T) @ b[s].T
    plan = LoraKernels().plan(decode_slots, segments, r, DEVICE)
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    y_dev = dev(wide)[:, 8:] if column_slice else dev(y)
    plan.apply(dev(x), y_dev, dev(a), dev(b))
    torch.testing.assert_close(y_dev.cpu(), expected, rtol=1e-3, atol=1e-3)


NAMES = [None, "a8", "b4", "c16", "a8"]
PROMPTS = [[5 + i, 40 + i, 7, 99, 3 * i + 1, 11] * (2 + i) for i in range(5)]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter run")
def test_engine_with_kernels_matches_the_grouped_path(tiny: Any, tmp_path: Path) -> None:
    """The kernels inside the engine (prefill segments and decode rows of 3 adapters and the
    base model in one batch) give the grouped path's tokens."""
    from deploylab.engine import SamplingParams

    from .conftest import SPECS, save_adapter

    paths = {s.name: str(save_adapter(tiny.model, s, tmp_path)[0]) for s in SPECS}
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    grouped = tiny.llm(lora_modules=paths, max_loras=3)
    kernels = tiny.llm(lora_modules=paths, max_loras=3)
    assert kernels.llm_engine.lora is not None
    kernels.llm_engine.lora._kernels = LoraKernels()
    want = [o.token_ids for o in grouped.generate(PROMPTS, params, lora=NAMES)]
    assert [o.token_ids for o in kernels.generate(PROMPTS, params, lora=NAMES)] == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_graphs_match_the_cpu_reference(tmp_path: Path) -> None:
    """On CUDA (fused projections, decode graphs with the slot tensor as input, SGMV for
    prefill) the tokens match the float32 CPU engine's (float16 tiny model)."""
    from deploylab.engine import LLM, EngineConfig, LLMEngine, SamplingParams
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    from .conftest import SPECS, save_adapter

    # The same weights on both sides: rounded to float16 once, then run in float32 on the CPU.
    model = init_random_model(get_preset("tiny"), torch.float16, "cpu", seed=0)
    reference = copy.deepcopy(model).float()
    paths = {s.name: str(save_adapter(reference, s, tmp_path)[0]) for s in SPECS}
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    cpu = EngineConfig(device="cpu", dtype="float32", lora_modules=paths, max_loras=3)
    want = LLM(llm_engine=LLMEngine(cpu, model=reference)).generate(PROMPTS, params, lora=NAMES)
    model = model.to("cuda")
    config = EngineConfig(
        device="cuda", dtype="float16", lora_modules=paths, max_loras=3, max_num_seqs=8,
        gpu_memory_utilization=0.3,
    )  # fmt: skip
    llm = LLM(llm_engine=LLMEngine(config, model=model, tokenizer=None))
    assert llm.llm_engine.runner.graphs is not None and llm.llm_engine.runner.graphs.lora
    got = llm.generate(PROMPTS, params, lora=NAMES)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]

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

from deploylab.engine.lora.triton_ops import LoraKernels, check_kernels  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("decode", ["tiles", "fused", "split"])
@pytest.mark.parametrize("k", [24, 1100])  # 1100: the decode shrink split over 3 programs
def test_kernels_match_torch(decode: str, k: int) -> None:
    """Decode rows (BGMV) and prefill segments (SGMV) of 3 projections writing adjacent
    column ranges of a wider output, slots of different ranks, base-model rows untouched."""
    gen = torch.Generator().manual_seed(0)
    r, widths = 16, [40, 24, 24]
    a = [torch.randn(3, r, k, generator=gen) for _ in widths]
    b = [torch.randn(3, n, r, generator=gen) for n in widths]
    for ai, bi in zip(a, b, strict=True):  # slot 1 holds a rank-8 adapter
        ai[1, 8:] = 0
        bi[1, :, 8:] = 0
    decode_slots = [2, -1, 0, 2]
    segments = [(4, 5, 1), (12, 20, 0)]  # rows 9..11 are a base-model chunk
    row_slots = decode_slots + [1] * 5 + [-1] * 3 + [0] * 20
    x = torch.randn(32, k, generator=gen)
    wide = torch.randn(32, 8 + sum(widths), generator=gen)  # the output starts at column 8
    expected = wide.clone()
    for i, s in enumerate(row_slots):
        if s >= 0:
            parts = [(x[i] @ ai[s].T) @ bi[s].T for ai, bi in zip(a, b, strict=True)]
            expected[i, 8:] += torch.cat(parts)
    plan = LoraKernels(decode).plan(decode_slots, segments, r, DEVICE)
    got = wide.to(DEVICE)
    dev = [t.to(DEVICE) for t in a], [t.to(DEVICE) for t in b]
    plan.apply(x.to(DEVICE), got[:, 8:], dev[0], dev[1], widths)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("decode", ["tiles", "fused", "split"])
def test_many_decode_rows_span_several_row_tiles(decode: str) -> None:
    """150 decode rows (more than one row tile of the slot-grouped kernels), slots scattered
    over the rows as a length-sorted batch leaves them, base-model rows among them."""
    gen = torch.Generator().manual_seed(1)
    k, r, widths, rows = 200, 16, [48, 16], 150
    a = [torch.randn(5, r, k, generator=gen) for _ in widths]
    b = [torch.randn(5, n, r, generator=gen) for n in widths]
    slots = torch.randint(-1, 5, (rows,), generator=gen).tolist()
    x = torch.randn(rows, k, generator=gen)
    y = torch.randn(rows, sum(widths), generator=gen)
    expected = y.clone()
    for i, s in enumerate(slots):
        if s >= 0:
            expected[i] += torch.cat(
                [(x[i] @ ai[s].T) @ bi[s].T for ai, bi in zip(a, b, strict=True)]
            )
    plan = LoraKernels(decode).plan(slots, [], r, DEVICE)
    got = y.to(DEVICE)
    plan.apply(x.to(DEVICE), got, [t.to(DEVICE) for t in a], [t.to(DEVICE) for t in b], widths)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("tile_rows", [2, 8])
@pytest.mark.parametrize("overlap", [True, False])
def test_row_tiles_sorted_by_slot(
    monkeypatch: pytest.MonkeyPatch, tile_rows: int, overlap: bool
) -> None:
    """BGMV programs of several rows read through the rows' slot order (a ragged last tile,
    base-model rows among them), the base outputs computed by a thunk beside the shrink."""
    from deploylab.engine.lora import triton_ops

    monkeypatch.setattr(triton_ops, "TILE_ROWS", tile_rows)
    gen = torch.Generator().manual_seed(2)
    k, r, widths, rows = 1100, 16, [96, 32, 32], 37
    a = [torch.randn(4, r, k, generator=gen) for _ in widths]
    b = [torch.randn(4, n, r, generator=gen) for n in widths]
    slots = torch.randint(-1, 4, (rows,), generator=gen)
    x = torch.randn(rows, k, generator=gen)
    y = torch.randn(rows, sum(widths), generator=gen)
    expected = y.clone()
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            parts = [(x[i] @ ai[s].T) @ bi[s].T for ai, bi in zip(a, b, strict=True)]
            expected[i] += torch.cat(parts)
    plan = LoraKernels("tiles", overlap=overlap).plan(slots.tolist(), [], r, DEVICE)
    base = y.to(DEVICE)
    dev_a, dev_b = [t.to(DEVICE) for t in a], [t.to(DEVICE) for t in b]
    got = plan.apply(x.to(DEVICE), lambda: base, dev_a, dev_b, widths)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-3, atol=1e-3)


def test_self_check_passes() -> None:
    for decode in ("tiles", "fused", "split"):
        check_kernels(DEVICE, decode)


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


def test_graph_plan_of_base_rows_leaves_the_output() -> None:
    """A decode graph's capture-time LoRA input (base-model rows only) runs every decode mode's
    kernels without touching the base outputs."""
    from deploylab.engine.lora.ops import slots_and_order

    gen = torch.Generator().manual_seed(3)
    k, r, widths, rows = 64, 16, [32, 16], 6
    a = [torch.randn(2, r, k, generator=gen).to(DEVICE) for _ in widths]
    b = [torch.randn(2, n, r, generator=gen).to(DEVICE) for n in widths]
    inputs = torch.tensor(slots_and_order([-1] * rows), dtype=torch.int32, device=DEVICE)
    x = torch.randn(rows, k, generator=gen).to(DEVICE)
    for decode in ("tiles", "fused", "split"):
        y = torch.randn(rows, sum(widths), generator=gen).to(DEVICE)
        want = y.clone()
        LoraKernels(decode).graph_plan(inputs, r).apply(x, y, a, b, widths)
        torch.testing.assert_close(y, want)

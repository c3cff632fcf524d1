"""Attention paths: grouped gather + SDPA on the CPU, the in-place decode-kernel plumbing
(checked on the CPU with the reference implementation), and the Triton kernel on CUDA."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from deploylab.engine import SamplingParams
from deploylab.engine.cuda_graphs import DecodeGraphs
from deploylab.engine.models.loader import init_random_model
from deploylab.engine.models.presets import get_preset
from deploylab.engine.triton_attention import reference_decode

from .conftest import ModelParts

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
PROMPTS = [list(range(3, 3 + n)) for n in (1, 5, 17, 33, 64, 90)]


def test_decode_groups_split_by_length(tiny: ModelParts) -> None:
    engine = tiny.engine()
    runner = engine.runner
    runner.group_bytes = 1 << 30
    assert runner._group_sizes([400, 390, 380, 100, 90, 20]) == [3, 2, 1]
    runner.group_bytes = 2 * 400 * runner._token_bytes  # two rows of 400 tokens
    assert runner._group_sizes([400, 400, 400, 400]) == [2, 2]


def test_decode_kernel_path_matches_gather_path(tiny: ModelParts) -> None:
    expected = [o.token_ids for o in tiny.llm().generate(PROMPTS, GREEDY)]
    llm = tiny.llm()
    llm.llm_engine.runner.paged_decode = reference_decode
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


@pytest.mark.parametrize("budget", [512, 32])
def test_prefill_kernel_plumbing_matches_sdpa_paths(tiny: ModelParts, budget: int) -> None:
    """The CUDA kernels' step inputs (one packed copy; chunk positions and slots made from
    the chunk table; decode tables and lengths) checked on the CPU with the kernels'
    reference implementations: same tokens as the gather + SDPA paths, with whole prompts
    (fresh keys/values), chunked prompts and prefix-cache hits (keys read from the cache)."""
    from deploylab.engine.triton_prefill import reference_prefill

    settings = dict(max_num_batched_tokens=budget, enable_prefix_caching=True)
    plain = tiny.llm(**settings)
    expected = [[o.token_ids for o in plain.generate(PROMPTS, GREEDY)] for _ in range(2)]
    llm = tiny.llm(**settings)
    runner = llm.llm_engine.runner
    runner.paged_prefill, runner.paged_decode = reference_prefill, reference_decode
    # The second round hits the prefix cache: its prompts continue after cached blocks.
    got = [[o.token_ids for o in llm.generate(PROMPTS, GREEDY)] for _ in range(2)]
    assert got == expected
    assert llm.llm_engine.stats().prefix_cache_hits > 0


def test_bfloat16_cpu_path_agrees_with_dense(tiny: ModelParts) -> None:
    """bf16 on the CPU (matmul decode attention): the first decode step's logits match the
    dense forward in bf16 within bf16 rounding."""
    from pathlib import Path

    model = init_random_model(get_preset("tiny"), torch.bfloat16, "cpu", seed=0)
    parts = ModelParts(Path("tiny"), model, None)
    engine = parts.engine(dtype="bfloat16")
    prompt = PROMPTS[4]
    engine.add_request("a", prompt, GREEDY)
    engine.step()  # prefill, samples token 1
    out = engine.scheduler.schedule()
    seqs, logits = engine.runner.execute(out)
    full = torch.tensor([seqs[0].token_ids])
    with torch.no_grad():
        dense = model.compute_logits(model(full, torch.arange(full.shape[1])[None]))[0, -1]
    assert logits is not None
    torch.testing.assert_close(logits[0], dense, atol=0.05, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("target_programs", [None, 1, 10_000])
@pytest.mark.parametrize("batch", [1, 5])
def test_triton_kernel_matches_reference(target_programs: int | None, batch: int) -> None:
    """With the context split in many parts (small batch), not split, and split finely."""
    from deploylab.engine.triton_attention import _build

    fn = _build(target_programs)
    gen = torch.Generator().manual_seed(batch)
    kvh, heads, dim, bs, nb = 8, 32, 64, 16, 300
    kc = torch.randn(kvh, nb, bs, dim, generator=gen).cuda().bfloat16()
    vc = torch.randn(kvh, nb, bs, dim, generator=gen).cuda().bfloat16()
    tables = torch.randint(0, nb, (batch, 40), generator=gen).int().cuda()
    lens = torch.tensor([640, 1, 16, 63, 300][:batch], dtype=torch.int32).cuda()
    q = torch.randn(batch, heads, dim, generator=gen).cuda().bfloat16()
    got = fn(q, kc, vc, tables, lens, dim**-0.5)
    ref = reference_decode(q, kc, vc, tables, lens, dim**-0.5)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


class EagerGraphs(DecodeGraphs):
    """DecodeGraphs with the capture replaced by eager calls (CUDA graphs need a GPU), to
    test the bucket padding and scratch-slot plumbing on the CPU."""

    def capture(self) -> None:
        for size in self.sizes:
            self.graphs[size] = self._new(size)

    def _replay(self, g: Any) -> torch.Tensor:
        return self._forward(g)


def test_graph_step_plumbing_matches_eager_steps(tiny: ModelParts) -> None:
    # Requests end at different steps, so batches shrink into smaller buckets and leave
    # rows and columns of earlier steps behind in the graphs' inputs.
    params = [replace(GREEDY, max_tokens=4 + 5 * i) for i in range(len(PROMPTS))]
    expected = [o.token_ids for o in tiny.llm().generate(PROMPTS, params)]
    llm = tiny.llm(max_num_seqs=8)
    engine = llm.llm_engine
    runner = engine.runner
    scratch = (runner.kv_cache.num_blocks - 1) * runner.block_size
    assert scratch // runner.block_size == engine.block_manager.num_blocks  # never handed out
    graphs = EagerGraphs(
        runner.model, runner.kv_cache, reference_decode, 8, -(-engine.max_model_len // 16), scratch
    )
    graphs.capture()
    assert graphs.sizes == [1, 2, 4, 8]
    for g in graphs.graphs.values():  # a valid block no request owns: reading it is wrong
        g.tables.fill_(scratch // runner.block_size)
    runner.graphs = graphs
    assert [o.token_ids for o in llm.generate(PROMPTS, params)] == expected


@pytest.mark.gpu
def test_cuda_paths_agree() -> None:
    """On CUDA (fp16): CUDA-graph decode, eager decode with the Triton kernels and the
    gather + SDPA fallbacks (decode and prefill) give the same greedy tokens."""
    import gc
    from pathlib import Path

    model = init_random_model(get_preset("tiny"), torch.float16, "cuda", seed=0)
    parts = ModelParts(Path("tiny"), model, None)
    results = []
    for mode in ("graphs", "kernel", "gather"):
        llm = parts.llm(
            device="cuda",
            dtype="float16",
            gpu_memory_utilization=0.2,
            cuda_graphs=mode == "graphs",
        )
        runner = llm.llm_engine.runner
        assert (runner.graphs is not None) == (mode == "graphs")
        assert runner.paged_decode is not None
        if mode == "gather":  # and SDPA prefill instead of the Triton prefill kernel
            assert runner.paged_prefill is not None
            runner.paged_decode = runner.paged_prefill = None
        results.append([o.token_ids for o in llm.generate(PROMPTS, GREEDY)])
        del llm, runner
        gc.collect()
        torch.cuda.empty_cache()
    assert results[0] == results[1] == results[2]

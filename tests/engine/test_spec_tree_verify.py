"""Token-tree verify chunks through the tree-attention kernel (`spec_decode/tree_verify.py`):
the same attention as the masked-SDPA verify path for random trees, contexts and scattered
blocks (torch plan on the CPU, the Triton kernel on CUDA), and the same greedy tokens as
plain decoding when the engine runs it."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from tests.engine.conftest import ModelParts
from tests.engine.test_spec_decode import keeps_greedy
from tests.engine.test_spec_tree import TREE

from deploylab.engine.spec_decode.tree_drafts import chunk_mask
from deploylab.engine.spec_decode.tree_verify import (
    ancestor_bits,
    build_tree_verify,
    verify_hook,
)
from deploylab.engine.spec_decode.verify_attention import build_verify_batch

BS, KVH, HEADS, D = 16, 2, 8, 32


def random_parents(n: int, rng: random.Random) -> list[int]:
    """A random tree of n drafts in topological order (-1: a child of the root)."""
    return [rng.randrange(-1, i) for i in range(n)]


def _case(
    device: str, dtype: torch.dtype, seed: int
) -> tuple[list[Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    nb = 200
    k_cache = torch.randn(KVH, nb, BS, D, generator=gen).to(device, dtype)
    v_cache = torch.randn(KVH, nb, BS, D, generator=gen).to(device, dtype)
    free = list(range(1, nb))
    rng.shuffle(free)  # blocks scattered in the cache
    items, start = [], 0
    for ctx, drafts in ((0, 3), (37, 7), (300, 15), (16, 1), (1000, 30)):
        ql = drafts + 1
        table = [free.pop() for _ in range(-(-(ctx + ql) // BS))]
        items.append((start, ql, ctx, table, random_parents(drafts, rng)))
        start += ql
    q = torch.randn(start + 5, HEADS, D, generator=gen).to(device, dtype)  # + rows not verified
    return items, q, k_cache, v_cache


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_kernel_rows_equal_masked_sdpa_rows(seed: int) -> None:
    items, q, k_cache, v_cache = _case("cpu", torch.float32, seed)
    head_rows = torch.arange(KVH, dtype=torch.int64) * k_cache.shape[1]
    want = torch.zeros_like(q)
    build_verify_batch(items, head_rows, BS, q.device)(q, k_cache, v_cache, want, 0.2)
    got = torch.zeros_like(q)
    tv = build_tree_verify(items, BS, q.device, rows_per_task=4, target_wide_tasks=8)
    tv(q, k_cache, v_cache, got, 0.2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not got[-5:].any()  # rows outside the chunks are left alone
    # Each tree's context is one shared segment, read once per task of at most 4 nodes
    # (rows_per_task), not once per node.
    assert tv.plan.tokens_read == sum(-(-ql // 4) * (ctx + ql) for _, ql, ctx, _, _ in items)
    assert tv.plan.tokens_plain == sum(ql * (ctx + ql) for _, ql, ctx, _, _ in items)


@pytest.mark.parametrize("n", [1, 5, 63])
def test_ancestor_bits_are_the_chunk_mask(n: int) -> None:
    parents = random_parents(n, random.Random(n))
    mask = chunk_mask(parents)
    bits = ancestor_bits(parents)
    for row, b in enumerate(bits):
        assert [bool((b >> c) & 1) for c in range(n + 1)] == mask[row].tolist()


def test_hook_sends_only_trees_to_the_kernel() -> None:
    items, q, k_cache, v_cache = _case("cpu", torch.float32, 3)
    chain = (items[-1][0] + items[-1][1], 3, 40, items[2][3], None)  # a plain verify chunk
    items = [*items, chain]
    head_rows = torch.arange(KVH, dtype=torch.int64) * k_cache.shape[1]

    class Decoder:
        rows_per_task, target_wide_tasks, verify_steps = 4, 8, 0

    decoder = Decoder()
    want = torch.zeros_like(q)
    build_verify_batch(items, head_rows, BS, q.device)(q, k_cache, v_cache, want, 0.3)
    got = torch.zeros_like(q)
    verify_hook(items, decoder, head_rows, BS, q.device)(q, k_cache, v_cache, got, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert decoder.verify_steps == 1
    alone = torch.zeros_like(q)
    verify_hook(items, None, head_rows, BS, q.device)(q, k_cache, v_cache, alone, 0.3)
    torch.testing.assert_close(alone, want)


def test_engine_with_tree_attention_keeps_greedy_output(tiny: ModelParts) -> None:
    engine = keeps_greedy(tiny, TREE, n=10, seed=2, tree_attention=True)
    assert engine.runner.tree is not None and engine.runner.tree.verify_steps > 0
    assert engine.spec.stats.num_accepted_tokens > 0  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_tree_verify_equals_masked_sdpa(dtype: torch.dtype) -> None:
    from deploylab.engine.triton_tree import TreeDecoder

    decoder = TreeDecoder(HEADS, KVH, BS)
    for seed in range(3):
        items, q, k_cache, v_cache = _case("cuda", dtype, seed)
        head_rows = torch.arange(KVH, dtype=torch.int64) * k_cache.shape[1]
        want = torch.zeros_like(q)
        batch = build_verify_batch(items, head_rows, BS, q.device)
        batch(q, k_cache, v_cache, want, 0.2)
        got = torch.zeros_like(q)
        tv = build_tree_verify(items, BS, q.device, decoder.rows_per_task, 33)
        assert tv.device_plan is not None
        tv(q, k_cache, v_cache, got, 0.2)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)

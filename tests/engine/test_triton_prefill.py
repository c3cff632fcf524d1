"""The Triton paged prefill kernel against SDPA with explicit masks (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine.triton_prefill import PrefillBatch, reference_prefill

pytestmark = pytest.mark.gpu


def make_case(
    shapes: list[tuple[int, int]], heads: int, kv_heads: int, dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PrefillBatch]:
    """q for chunks of (query length, context length) and a cache with shuffled blocks."""
    gen = torch.Generator().manual_seed(sum(n + c for n, c in shapes))
    bs = 16
    widths = [-(-c // bs) for _, c in shapes]
    blocks = sum(widths) + 3
    k_cache = torch.randn(kv_heads, blocks, bs, dim, generator=gen).cuda().to(dtype)
    v_cache = torch.randn(kv_heads, blocks, bs, dim, generator=gen).cuda().to(dtype)
    perm = torch.randperm(blocks, generator=gen).tolist()
    tables = torch.zeros(len(shapes), max(widths), dtype=torch.int64)
    used = 0
    for i, w in enumerate(widths):
        tables[i, :w] = torch.tensor(perm[used : used + w])
        used += w
    starts = [sum(n for n, _ in shapes[:i]) for i in range(len(shapes))]
    info = torch.tensor([starts, [n for n, _ in shapes], [c for _, c in shapes]])
    tokens = sum(n for n, _ in shapes)
    q = torch.randn(tokens, heads, dim, generator=gen).cuda().to(dtype)
    batch = PrefillBatch(info.cuda(), tables.cuda(), max(n for n, _ in shapes))
    return q, k_cache, v_cache, batch


@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim", "dtype"),
    [(32, 8, 64, torch.bfloat16), (8, 8, 128, torch.float16), (12, 4, 64, torch.float16)],
)
def test_kernel_matches_sdpa(heads: int, kv_heads: int, dim: int, dtype: torch.dtype) -> None:
    """Fresh prompts (one tile, many tiles, odd lengths), chunks after cached context and a
    one-token chunk, in one launch; rows outside the chunks are left untouched."""
    from deploylab.engine.triton_prefill import TileConfig, _build

    shapes = [(1000, 1000), (5, 5), (130, 900), (1, 37), (64, 64), (257, 320)]
    q, k_cache, v_cache, batch = make_case(shapes, heads, kv_heads, dim, dtype)
    scale = dim**-0.5
    ref = torch.zeros_like(q)
    reference_prefill(q, k_cache, v_cache, batch, scale, ref)
    for tile in (None, TileConfig(block_m=128, block_n=64, num_warps=8)):
        out = torch.full_like(q, 7.0)
        _build(tile)(q, k_cache, v_cache, batch, scale, out)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_strided_query_from_the_fused_projection() -> None:
    """q as a view into the fused q/k/v projection (row stride larger than heads x dim)."""
    from deploylab.engine.triton_prefill import load_paged_prefill

    fn = load_paged_prefill(torch.device("cuda"), torch.bfloat16)
    assert fn is not None  # the start-up self-check passed
    q, k_cache, v_cache, batch = make_case([(300, 300), (20, 170)], 16, 4, 64, torch.bfloat16)
    wide = torch.randn(q.shape[0], 16 + 8, 64, device="cuda", dtype=torch.bfloat16)
    wide[:, :16] = q
    view = wide[:, :16]
    assert not view.is_contiguous()
    ref, out = torch.zeros_like(q), torch.zeros_like(q)
    reference_prefill(q, k_cache, v_cache, batch, 0.125, ref)
    fn(view, k_cache, v_cache, batch, 0.125, out)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_fresh_keys_and_values_instead_of_the_cache() -> None:
    """Whole-prompt chunks reading the step's contiguous keys/values `[T, kv_heads, d]` give
    what reading the same keys/values from the cache gives."""
    from deploylab.engine.triton_prefill import TileConfig, _build

    shapes = [(1000, 1000), (5, 5), (64, 64), (257, 257)]
    q, k_cache, v_cache, batch = make_case(shapes, 32, 8, 64, torch.bfloat16)
    batch.fresh = True
    # The chunks' keys/values in token order, read back from their cache blocks.
    fresh = []
    for cache in (k_cache, v_cache):
        rows = []
        for c, (n, _) in enumerate(shapes):
            table = batch.tables[c, : -(-n // 16)]
            rows.append(cache[:, table].reshape(8, -1, 64)[:, :n].transpose(0, 1))
        fresh.append(torch.cat(rows).contiguous())
    ref = torch.zeros_like(q)
    reference_prefill(q, k_cache, v_cache, batch, 0.125, ref)
    for tile in (None, TileConfig(block_m=128, block_n=64, num_warps=8)):
        out = torch.zeros_like(q)
        _build(tile)(q, k_cache, v_cache, batch, 0.125, out, (fresh[0], fresh[1]))
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)

"""Paged decode attention as a Triton kernel (CUDA only; optional).

One program per (sequence, KV head, context split) walks its part of the sequence's block
table in tiles of `TILE` tokens, loading keys and values straight from the paged cache (no
gather copy), with an online softmax in float32. The query heads that share the KV head are
the rows of the dot products (padded to 16, the smallest `tl.dot` shape). When the batch is
too small to fill the GPU, the context is split (flash-decoding) and a second kernel merges
the splits' partial softmax sums.

`load_paged_decode()` returns None when Triton is missing; the engine then uses the gather +
SDPA path of `attention.py`, which is also the reference the kernel is checked against at
start-up (`self_check`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

PagedDecodeFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor
]
TILE = 64


def _build(target_programs: int | None = None) -> PagedDecodeFn:
    import triton
    import triton.language as tl

    # The block-table width and the split sizes change with every eager step's shapes: they
    # are plain integers, not specialised on, so they never trigger a recompile mid-serving.
    @triton.jit(do_not_specialize=["stride_btb", "num_splits", "split_tokens"])
    def _partial_kernel(  # type: ignore[no-untyped-def]
        Q, K, V, BT, LENS, OUT, M, L, ACC, scale,
        stride_qb, stride_qh, stride_kh, stride_kb, stride_btb, stride_ob, stride_oh,
        num_splits, split_tokens, SPLIT: tl.constexpr,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr,
    ):  # fmt: skip
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(LENS + seq)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        heads = kvh * GROUP + g
        gmask = g < GROUP
        q = tl.load(
            Q + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=gmask[:, None],
            other=0.0,
        )
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        t = tl.arange(0, TILE)
        lo = split * split_tokens
        hi = tl.minimum(ctx, lo + split_tokens)
        for start in range(lo, hi, TILE):
            pos = start + t
            valid = pos < hi
            blk = tl.load(BT + seq * stride_btb + pos // BLOCK_SIZE, mask=valid, other=0)
            off = kvh * stride_kh + blk.to(tl.int64) * stride_kb + (pos % BLOCK_SIZE) * HEAD_DIM
            k = tl.load(K + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if not SPLIT:
            out = acc / l_i[:, None]
            tl.store(
                OUT + seq * stride_ob + heads[:, None] * stride_oh + d[None, :],
                out.to(OUT.dtype.element_ty),
                mask=gmask[:, None],
            )
        else:
            # Partial results of this split, combined by _combine_kernel.
            row = (seq * tl.num_programs(1) + kvh) * num_splits + split
            tl.store(M + row * GROUP_PAD + g, m_i)
            tl.store(L + row * GROUP_PAD + g, l_i)
            tl.store(ACC + (row * GROUP_PAD + g[:, None]) * HEAD_DIM + d[None, :], acc)

    @triton.jit(do_not_specialize=["num_splits"])
    def _combine_kernel(  # type: ignore[no-untyped-def]
        OUT, M, L, ACC, stride_ob, stride_oh, num_splits,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):  # fmt: skip
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        base = (seq * tl.num_programs(1) + kvh) * num_splits
        m_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        for s in range(num_splits):
            m_max = tl.maximum(m_max, tl.load(M + (base + s) * GROUP_PAD + g))
        total = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for s in range(num_splits):
            m_s = tl.load(M + (base + s) * GROUP_PAD + g)
            # An empty split has m = -inf and l = 0: weight 0 (guard -inf - -inf = nan).
            w = tl.where(m_s > float("-inf"), tl.exp(m_s - m_max), 0.0)
            total += w * tl.load(L + (base + s) * GROUP_PAD + g)
            a = tl.load(ACC + ((base + s) * GROUP_PAD + g[:, None]) * HEAD_DIM + d[None, :])
            acc += w[:, None] * a
        out = acc / total[:, None]
        heads = kvh * GROUP + g
        tl.store(
            OUT + seq * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(OUT.dtype.element_ty),
            mask=(g < GROUP)[:, None],
        )

    # Enough programs to occupy every multiprocessor once (the current device by default).
    programs = target_programs or torch.cuda.get_device_properties().multi_processor_count

    def paged_decode(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        tables: torch.Tensor,
        lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """q `[B, H, d]`; caches `[kv_heads, num_blocks, block_size, d]`; tables
        `[B, max_blocks]`; lens `[B]` -> `[B, H, d]`."""
        batch, heads, dim = q.shape
        kv_heads, _, block_size, _ = k_cache.shape
        group = heads // kv_heads
        group_pad = max(16, triton.next_power_of_2(group))
        tile = max(TILE, block_size)
        # Split the context (flash-decoding) when batch x kv_heads programs would leave
        # the GPU idle; the split count depends only on shapes, so CUDA graphs can hold it.
        width = tables.shape[1] * block_size
        max_splits = -(-width // tile)
        splits = max(1, min(max_splits, -(-programs // (batch * kv_heads))))
        split_tokens = -(-max_splits // splits) * tile
        splits = -(-width // split_tokens)
        out = torch.empty_like(q)
        part = (batch * kv_heads * splits, group_pad)
        m = l_ = acc = out
        if splits > 1:
            m = torch.empty(part, dtype=torch.float32, device=q.device)
            l_ = torch.empty(part, dtype=torch.float32, device=q.device)
            acc = torch.empty((*part, dim), dtype=torch.float32, device=q.device)
        grid: Any = (batch, kv_heads, splits)
        _partial_kernel[grid](
            q, k_cache, v_cache, tables, lens, out, m, l_, acc, scale,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), tables.stride(0),
            out.stride(0), out.stride(1),
            splits, split_tokens, SPLIT=splits > 1,
            GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=dim, BLOCK_SIZE=block_size, TILE=tile,
        )  # fmt: skip
        if splits > 1:
            _combine_kernel[(batch, kv_heads)](
                out, m, l_, acc, out.stride(0), out.stride(1), splits,
                GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=dim,
            )  # fmt: skip
        return out

    return paged_decode


def reference_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The same attention by gathering blocks and calling SDPA (for checks)."""
    kv_heads, _, block_size, dim = k_cache.shape
    batch, heads, _ = q.shape
    length = tables.shape[1] * block_size
    k = k_cache[:, tables.long()].permute(1, 0, 2, 3, 4).reshape(batch, kv_heads, length, dim)
    v = v_cache[:, tables.long()].permute(1, 0, 2, 3, 4).reshape(batch, kv_heads, length, dim)
    mask = torch.arange(length, device=q.device)[None, :] < lens[:, None].long()
    out = torch.nn.functional.scaled_dot_product_attention(
        q.view(batch, kv_heads, heads // kv_heads, dim).float(),
        k.float(),
        v.float(),
        attn_mask=mask[:, None, None, :],
        scale=scale,
    )
    return out.reshape(batch, heads, dim).to(q.dtype)


def self_check(fn: PagedDecodeFn, device: torch.device, dtype: torch.dtype) -> bool:
    """Run the kernel on a small random case and compare with `reference_decode`."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    kv_heads, heads, dim, block_size, blocks = 2, 8, 64, 16, 40
    k_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=gen).to(device, dtype)
    v_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=gen).to(device, dtype)
    tables = torch.randperm(blocks, generator=gen)[:30].view(3, 10).to(device, torch.int32)
    lens = torch.tensor([1, 77, 160], dtype=torch.int32, device=device)
    q = torch.randn(3, heads, dim, generator=gen).to(device, dtype)
    try:
        got = fn(q, k_cache, v_cache, tables, lens, dim**-0.5)
    except Exception as exc:  # a compiler or driver problem: fall back, don't crash serving
        logger.warning("Triton paged decode unavailable (%s); using gather + SDPA", exc)
        return False
    ref = reference_decode(q, k_cache, v_cache, tables, lens, dim**-0.5)
    ok = torch.allclose(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
    if not ok:
        logger.warning("Triton paged decode disagrees with SDPA; using gather + SDPA")
    return bool(ok)


def load_paged_decode(device: torch.device, dtype: torch.dtype) -> PagedDecodeFn | None:
    """The Triton kernel if Triton is installed and the kernel passes `self_check`."""
    try:
        fn = _build(torch.cuda.get_device_properties(device).multi_processor_count)
    except ImportError:
        return None
    return fn if self_check(fn, device, dtype) else None

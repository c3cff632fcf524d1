"""Paged prefill attention as one Triton kernel for all of a step's prefill chunks (CUDA).

The fused CUDA path has already stored every chunk's keys/values in the paged cache when
attention runs, so one kernel serves both kinds of chunk: a fresh prompt and a chunk after
cached context (chunked prefill, prefix-cache hits). One program per (query head, chunk,
query tile) walks the chunk's block table up to its causal limit, loading keys and values
straight from the cache (or, when every chunk is a whole prompt, from the step's contiguous
fresh keys/values: no block-table indirection, faster), with an online softmax in float32
(base-2 exponentials). Key tiles wholly below the diagonal skip the mask; query tiles are
issued longest-first across all heads, so the causal triangle's heavy tiles start early and
short ones fill the tail.

`load_paged_prefill()` returns None when Triton is missing or the kernel fails its start-up
check against `reference_prefill` (SDPA with explicit masks); the engine then uses SDPA.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class PrefillBatch:
    """A step's prefill chunks for the kernel, on the device (int64).

    `info` is `[3, C]`: query start (row in the step's token axis), query length, context
    length (cached tokens + query length); `tables` is `[C, max_blocks]`."""

    info: torch.Tensor
    tables: torch.Tensor
    max_query_len: int
    # Every chunk is a whole prompt (no cached context): the kernel can read the step's
    # contiguous fresh keys/values instead of the cache (faster, measured on H100).
    fresh: bool = False
    first_position: int | None = None  # the first chunk's first position, when known on the host

    def positions_and_slots(
        self, first_row: int, num_tokens: int, block_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and cache slots of the chunks' tokens (rows `[first_row, num_tokens)`
        of the step), computed on the device without a host sync."""
        starts, lens, ctx = self.info
        n = num_tokens - first_row
        device = self.info.device
        if len(lens) == 1 and self.first_position is not None:  # fewer launches, same values
            p0 = self.first_position
            pos = torch.arange(p0, p0 + n, device=device)
            offsets = torch.arange(block_size, device=device)
            slots = (self.tables[0, :, None] * block_size + offsets).flatten()[p0 : p0 + n]
            return pos, slots
        chunk = torch.repeat_interleave(torch.arange(len(lens), device=device), lens, output_size=n)
        offset = (ctx - lens - starts + first_row)[chunk]  # position - row among the chunks
        pos = torch.arange(n, device=device) + offset
        slots = self.tables[chunk, pos // block_size] * block_size + pos % block_size
        return pos, slots


class PagedPrefillFn(Protocol):
    """The kernel's Python entry (see `_build`)."""

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: PrefillBatch,
        scale: float,
        out: torch.Tensor,
        fresh_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch options."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


# The fastest tiles measured on H100 (head_dim 64, 4k tokens; benchmarks/attention_variants.py)
# for reading the fresh keys/values and for reading the paged cache.
FRESH_TILE = TileConfig(64, 64, 4, 3)
PAGED_TILE = TileConfig(64, 128, 4, 2)


def _build(tile: TileConfig | None = None) -> PagedPrefillFn:
    """The kernel's entry; `tile` forces one tile shape for both modes (benchmarks)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _tile(  # type: ignore[no-untyped-def]
        q, acc, m_i, l_i, K, V, BT, start, kv_base, row_stride, qpos, ctx, qk_scale, d,
        MASKED: tl.constexpr, PAGED: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):  # fmt: skip
        pos = start + tl.arange(0, BLOCK_N)
        if PAGED:
            if MASKED:
                blk = tl.load(BT + pos // BLOCK_SIZE, mask=pos < ctx, other=0)
            else:
                blk = tl.load(BT + pos // BLOCK_SIZE)
            off = kv_base + blk.to(tl.int64) * row_stride + (pos % BLOCK_SIZE) * HEAD_DIM
        else:
            off = kv_base + pos.to(tl.int64) * row_stride
        if MASKED:
            kt = tl.load(K + off[None, :] + d[:, None], mask=(pos < ctx)[None, :], other=0.0)
        else:
            kt = tl.load(K + off[None, :] + d[:, None])
        s = tl.dot(q, kt) * qk_scale
        if MASKED:
            s = tl.where((pos[None, :] <= qpos[:, None]) & (pos < ctx)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        if MASKED:
            v = tl.load(V + off[:, None] + d[None, :], mask=(pos < ctx)[:, None], other=0.0)
        else:
            v = tl.load(V + off[:, None] + d[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, m_new, l_i * alpha + tl.sum(p, 1)

    # Integers that change from step to step are not specialised on (value 1, multiple of
    # 16): each new combination would compile a new kernel in the middle of serving.
    @triton.jit(do_not_specialize=["stride_btc", "stride_info"])
    def _prefill_kernel(  # type: ignore[no-untyped-def]
        Q, K, V, BT, INFO, OUT, qk_scale,
        stride_qt, stride_qh, stride_kh, row_stride, stride_btc, stride_info, stride_ot,
        stride_oh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
    ):  # fmt: skip
        head = tl.program_id(0)
        chunk = tl.program_id(1)
        qlen = tl.load(INFO + stride_info + chunk)
        # Longest-first: the first programs launched take every head's last query tile.
        mblk = tl.cdiv(qlen, BLOCK_M) - 1 - tl.program_id(2)
        if mblk < 0:
            return
        qstart = tl.load(INFO + chunk)
        ctx = tl.load(INFO + 2 * stride_info + chunk)
        cached = ctx - qlen
        rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, HEAD_DIM)
        rmask = rows < qlen
        tok = (qstart + rows).to(tl.int64)
        q = tl.load(
            Q + tok[:, None] * stride_qt + head * stride_qh + d[None, :],
            mask=rmask[:, None],
            other=0.0,
        )
        qpos = cached + rows
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        kv_base = (head // GROUP).to(tl.int64) * stride_kh
        if not PAGED:  # fresh keys/values of the step, token-major: the chunk starts at qstart
            kv_base += qstart.to(tl.int64) * row_stride
        bt = BT + chunk * stride_btc
        # Keys every row of the tile sees need no mask; the rest up to the tile's last row do.
        full = (cached + mblk * BLOCK_M) // BLOCK_N * BLOCK_N
        hi = tl.minimum(ctx, cached + (mblk + 1) * BLOCK_M)
        for start in range(0, full, BLOCK_N):
            acc, m_i, l_i = _tile(
                q, acc, m_i, l_i, K, V, bt, start, kv_base, row_stride, qpos, ctx, qk_scale, d,
                False, PAGED, BLOCK_N, BLOCK_SIZE, HEAD_DIM,
            )  # fmt: skip
        for start in range(full, hi, BLOCK_N):
            acc, m_i, l_i = _tile(
                q, acc, m_i, l_i, K, V, bt, start, kv_base, row_stride, qpos, ctx, qk_scale, d,
                True, PAGED, BLOCK_N, BLOCK_SIZE, HEAD_DIM,
            )  # fmt: skip
        out = acc / l_i[:, None]
        tl.store(
            OUT + tok[:, None] * stride_ot + head * stride_oh + d[None, :],
            out.to(OUT.dtype.element_ty),
            mask=rmask[:, None],
        )

    def paged_prefill(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: PrefillBatch,
        scale: float,
        out: torch.Tensor,
        fresh_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """q and out `[T, H, d]` (rows as in `batch.info`); caches `[kv_heads, num_blocks,
        block_size, d]`. Writes the chunks' attention output into `out`. With `fresh_kv`
        (the step's keys and values `[T, kv_heads, d]`, every chunk a whole prompt) the
        kernel reads those instead of the cache."""
        heads, dim = q.shape[1], q.shape[2]
        kv_heads, _, block_size, _ = k_cache.shape
        chunks = batch.info.shape[1]
        use = tile or (PAGED_TILE if fresh_kv is None else FRESH_TILE)
        if fresh_kv is None:
            k, v, stride_kh, row_stride = k_cache, v_cache, k_cache.stride(0), k_cache.stride(1)
        else:
            k, v = fresh_kv
            assert k.stride() == v.stride() and k.stride(2) == 1
            stride_kh, row_stride = k.stride(1), k.stride(0)
        grid: Any = (heads, chunks, triton.cdiv(batch.max_query_len, use.block_m))
        _prefill_kernel[grid](
            q, k, v, batch.tables, batch.info, out, scale * math.log2(math.e),
            q.stride(0), q.stride(1), stride_kh, row_stride,
            batch.tables.stride(0), batch.info.stride(0), out.stride(0), out.stride(1),
            GROUP=heads // kv_heads, HEAD_DIM=dim, BLOCK_SIZE=block_size,
            BLOCK_M=use.block_m, BLOCK_N=use.block_n, PAGED=fresh_kv is None,
            num_warps=use.num_warps, num_stages=use.num_stages,
        )  # fmt: skip

    return paged_prefill


def reference_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: PrefillBatch,
    scale: float,
    out: torch.Tensor,
    fresh_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """The same attention, chunk by chunk, by gathering blocks and calling SDPA (checks;
    `fresh_kv` is ignored: the cache holds the same keys and values)."""
    kv_heads, _, block_size, dim = k_cache.shape
    heads = q.shape[1]
    for c in range(batch.info.shape[1]):
        start, n, ctx = (int(x) for x in batch.info[:, c].tolist())
        table = batch.tables[c, : -(-ctx // block_size)].long()
        k = k_cache[:, table].reshape(kv_heads, -1, dim)[:, :ctx]
        v = v_cache[:, table].reshape(kv_heads, -1, dim)[:, :ctx]
        qpos = torch.arange(ctx - n, ctx, device=q.device)
        mask = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None]
        o = F.scaled_dot_product_attention(
            q[start : start + n].transpose(0, 1).float(),
            k.repeat_interleave(heads // kv_heads, 0).float(),
            v.repeat_interleave(heads // kv_heads, 0).float(),
            attn_mask=mask,
            scale=scale,
        )
        out[start : start + n] = o.transpose(0, 1).to(out.dtype)


def self_check(fn: PagedPrefillFn, device: torch.device, dtype: torch.dtype) -> bool:
    """Run the kernel on a small mixed case (a fresh chunk, a chunk after context, a short
    one) and compare with `reference_prefill`."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    kv_heads, heads, dim, block_size, blocks = 2, 8, 64, 16, 64
    k_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=gen).to(device, dtype)
    v_cache = torch.randn(kv_heads, blocks, block_size, dim, generator=gen).to(device, dtype)
    # (query length, context length): fresh, after 130 cached tokens, 3 tokens after 40.
    shapes = [(200, 200), (70, 200), (3, 43)]
    info = torch.tensor(
        [[0, 200, 270], [n for n, _ in shapes], [c for _, c in shapes]], dtype=torch.int64
    )
    tables = torch.randperm(blocks, generator=gen)[:39].view(3, 13)
    batch = PrefillBatch(info.to(device), tables.to(device), max_query_len=200)
    q = torch.randn(273, heads, dim, generator=gen).to(device, dtype)
    got, ref = torch.zeros_like(q), torch.zeros_like(q)
    # The first chunk again as a whole-prompt step reading fresh keys/values (compiles that
    # variant now rather than on the first request).
    fresh_batch = PrefillBatch(info[:, :1].to(device), tables[:1].to(device), 200, fresh=True)
    rows = tables[0, :13].to(device)
    fresh_kv = tuple(c[:, rows].reshape(kv_heads, -1, dim)[:, :200].transpose(0, 1).contiguous()
                     for c in (k_cache, v_cache))  # fmt: skip
    got_fresh = torch.zeros_like(q)
    try:
        fn(q, k_cache, v_cache, batch, dim**-0.5, got)
        fn(q, k_cache, v_cache, fresh_batch, dim**-0.5, got_fresh, (fresh_kv[0], fresh_kv[1]))
    except Exception as exc:  # a compiler or driver problem: fall back, don't crash serving
        logger.warning("Triton paged prefill unavailable (%s); using SDPA", exc)
        return False
    reference_prefill(q, k_cache, v_cache, batch, dim**-0.5, ref)
    ok = torch.allclose(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
    ok = ok and torch.allclose(got_fresh[:200].float(), ref[:200].float(), atol=2e-2, rtol=2e-2)
    if not ok:
        logger.warning("Triton paged prefill disagrees with SDPA; using SDPA")
    return bool(ok)


def load_paged_prefill(device: torch.device, dtype: torch.dtype) -> PagedPrefillFn | None:
    """The Triton kernel if Triton is installed and the kernel passes `self_check`."""
    try:
        fn = _build()
    except ImportError:
        return None
    return fn if self_check(fn, device, dtype) else None

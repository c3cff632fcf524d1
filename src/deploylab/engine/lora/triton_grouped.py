"""Triton LoRA kernels for decode rows grouped by adapter slot (the fused decode path).

BGMV gives every row its own program, which reads the row's adapter weights: with 64 rows
over 16 adapters each adapter's A and B are read four times per projection. Here a program
owns one slot (and a K split of the shrink, or a column block of the expand): it reads that
slot's weights once and applies them with tensor-core dots to a tile of rows, masked to the
rows whose slot it is. The row-to-slot vector stays a tensor input, so one captured CUDA
graph serves any mix; the grid is the number of slots, known at start. Programs of slots
absent from the step find no row and return at once.
"""

from __future__ import annotations

import triton
import triton.language as tl

ROW_TILE = 64  # decode rows per tile (a step's rows are scanned in tiles of this many)


@triton.jit
def _pick3(i, p0, p1, p2):
    """`p0`, `p1` or `p2` by module index `i` (up to 3 projections share one launch)."""
    if i == 0:
        p = p0
    elif i == 1:
        p = p1
    else:
        p = p2
    return p


@triton.jit
def grouped_shrink(
    X, A0, A1, A2, H, SLOTS, D, K, sxm, sas, sar, shs, shm,
    R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, K_CHUNK: tl.constexpr,
):  # fmt: skip
    """Program (slot, module, split): `H[split, rows of slot, module*R : +R]` = the rows'
    `x[:, chunk] @ A[slot][:, chunk].T` for this split's chunk of the K input features."""
    slot = tl.program_id(0)
    module = tl.program_id(1)
    k_lo = tl.program_id(2) * K_CHUNK
    a_base = _pick3(module, A0, A1, A2) + slot * sas
    offs_r = tl.arange(0, R)
    for m0 in range(0, D, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mine = tl.load(SLOTS + offs_m, mask=offs_m < D, other=-1) == slot
        if tl.max(mine.to(tl.int32), axis=0) > 0:
            acc = tl.zeros([BLOCK_M, R], dtype=tl.float32)
            for k0 in tl.static_range(0, K_CHUNK, BLOCK_K):
                offs_k = k_lo + k0 + tl.arange(0, BLOCK_K)
                mk = offs_k < K
                x_ptr = X + offs_m[:, None] * sxm + offs_k[None, :]
                x = tl.load(x_ptr, mask=mine[:, None] & mk[None, :], other=0.0)
                a_ptr = a_base + offs_r[None, :] * sar + offs_k[:, None]
                a = tl.load(a_ptr, mask=mk[:, None], other=0.0)  # [BLOCK_K, R] = A.T
                acc += tl.dot(x, a.to(x.dtype), input_precision="ieee")
            h_ptr = H + tl.program_id(2) * shs + offs_m[:, None] * shm + module * R
            tl.store(h_ptr + offs_r[None, :], acc, mask=mine[:, None])


@triton.jit
def grouped_expand(
    H, B0, B1, B2, Y, SLOTS, D, N0, N1, N2, sbs0, sbs1, sbs2, sbn, shs, shm, sym,
    R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
):  # fmt: skip
    """Program (slot, column block, module): `y[rows of slot, cols] += h @ B[slot].T`, h the
    sum of the shrink's K-split partials; outputs of the modules are adjacent columns of Y."""
    slot = tl.program_id(0)
    module = tl.program_id(2)
    n_mod = _pick3(module, N0, N1, N2)
    col = _pick3(module, N0 - N0, N0, N0 + N1)  # a runtime 0 for module 0 (same type)
    sbs = _pick3(module, sbs0, sbs1, sbs2)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = offs_n < n_mod
    if tl.program_id(1) * BLOCK_N < n_mod:
        offs_r = tl.arange(0, R)
        b_ptr = _pick3(module, B0, B1, B2) + slot * sbs + offs_n[None, :] * sbn
        b = tl.load(b_ptr + offs_r[:, None], mask=mn[None, :], other=0.0)  # [R, BLOCK_N]
        for m0 in range(0, D, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mine = tl.load(SLOTS + offs_m, mask=offs_m < D, other=-1) == slot
            if tl.max(mine.to(tl.int32), axis=0) > 0:
                h = tl.zeros([BLOCK_M, R], dtype=tl.float32)
                h_ptr = H + offs_m[:, None] * shm + module * R + offs_r[None, :]
                for s in tl.static_range(SPLITS):  # a fixed order: deterministic sums
                    h += tl.load(h_ptr + s * shs, mask=mine[:, None], other=0.0)
                delta = tl.dot(h.to(b.dtype), b, input_precision="ieee")
                y_ptr = Y + offs_m[:, None] * sym + col + offs_n[None, :]
                mask = mine[:, None] & mn[None, :]
                y = tl.load(y_ptr, mask=mask, other=0.0)
                tl.store(y_ptr, (y.to(tl.float32) + delta).to(y.dtype), mask=mask)

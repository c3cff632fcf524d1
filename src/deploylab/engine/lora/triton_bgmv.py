"""Triton BGMV kernels: the LoRA corrections of decode rows (one token per row, each row's
adapter slot read from a tensor, so a captured CUDA graph serves any mix of adapters).

Two launches per projection group (q/k/v, gate/up, or one projection): the shrink writes
`h = x @ A[slot].T` in float32, split over K (one partial per K chunk: a program looping over
all of K waits on one load after another), and the expand adds `h @ B[slot].T` to y, summing
the partials in a fixed order. A program covers `T` rows taken through `ORDER`, the rows
sorted by slot: rows of one adapter then share a program, which reads that adapter's A and B
tiles once (per-row programs re-read them from L2 for every row, which made the expand of
gate/up bandwidth-bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

K_CHUNK = 512  # shrink: input features per program
BLOCK_K = 128
BLOCK_N = 128  # expand: output columns per program


@triton.jit
def _tile_rows(SLOTS, ORDER, D, T: tl.constexpr):
    """This program's rows (through ORDER), whether each is real, and their slots (-1: none)."""
    idx = tl.program_id(0) * T + tl.arange(0, T)
    valid = idx < D
    rows = tl.load(ORDER + idx, mask=valid, other=0)
    slots = tl.load(SLOTS + rows, mask=valid, other=-1)
    return rows, valid, slots


@triton.jit
def _bgmv_shrink(
    X, A0, A1, A2, H, SLOTS, ORDER, D, K, sxm, sas, sar, shs, shm,
    R: tl.constexpr, T: tl.constexpr, BLOCK_K: tl.constexpr, K_CHUNK: tl.constexpr,
):  # fmt: skip
    """Program (row tile, module, split) writes split's partial of
    `H[row, module * R : (module + 1) * R]` for its rows; base-model rows load nothing."""
    module = tl.program_id(1)
    if module == 0:
        a_base = A0
    elif module == 1:
        a_base = A1
    else:
        a_base = A2
    rows, valid, slots = _tile_rows(SLOTS, ORDER, D, T)
    k_lo = tl.program_id(2) * K_CHUNK
    k_end = tl.where(slots >= 0, tl.minimum(k_lo + K_CHUNK, K), 0)[:, None]
    slots = tl.maximum(slots, 0)
    offs_r = tl.arange(0, R)
    a_rows = a_base + slots[:, None, None] * sas + offs_r[None, :, None] * sar  # [T, R, 1]
    acc = tl.zeros([T, R], dtype=tl.float32)
    for k0 in tl.static_range(0, K_CHUNK, BLOCK_K):  # a fixed trip count: loads in flight
        offs_k = (k_lo + k0 + tl.arange(0, BLOCK_K))[None, :]
        mk = offs_k < k_end  # [T, BLOCK_K]
        x = tl.load(X + rows[:, None] * sxm + offs_k, mask=mk, other=0.0).to(tl.float32)
        a = tl.load(a_rows + offs_k[:, None, :], mask=mk[:, None, :], other=0.0)
        acc += tl.sum(a.to(tl.float32) * x[:, None, :], axis=2)
    h_ptr = H + tl.program_id(2) * shs + rows[:, None] * shm + module * R + offs_r[None, :]
    tl.store(h_ptr, acc, mask=valid[:, None])


@triton.jit
def _bgmv_expand(
    H, B0, B1, B2, Y, SLOTS, ORDER, D, N0, N1, N2, sbs0, sbs1, sbs2, sbn, shs, shm, sym,
    R: tl.constexpr, T: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
):  # fmt: skip
    """Program (row tile, column block, module) adds `h @ B[slot].T` to its columns of the
    module's output, whose columns follow the earlier modules' in Y."""
    module = tl.program_id(2)
    if module == 0:
        b_base, n_mod, col, sbs = B0, N0, N0 - N0, sbs0  # col: a runtime 0, same type
    elif module == 1:
        b_base, n_mod, col, sbs = B1, N1, N0, sbs1
    else:
        b_base, n_mod, col, sbs = B2, N2, N0 + N1, sbs2
    rows, valid, slots = _tile_rows(SLOTS, ORDER, D, T)
    n_end = tl.where(slots >= 0, n_mod, 0)[:, None]  # base-model rows are left as they are
    slots = tl.maximum(slots, 0)
    offs_r = tl.arange(0, R)
    h = tl.zeros([T, R], dtype=tl.float32)
    h_ptr = H + rows[:, None] * shm + module * R + offs_r[None, :]
    for s in tl.static_range(SPLITS):  # the shrink's partials, in a fixed order
        h += tl.load(h_ptr + s * shs, mask=valid[:, None], other=0.0)
    offs_n = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
    mn = offs_n < n_end  # [T, BLOCK_N]
    b_ptr = b_base + slots[:, None, None] * sbs + offs_n[:, :, None] * sbn + offs_r[None, None, :]
    b = tl.load(b_ptr, mask=mn[:, :, None], other=0.0).to(tl.float32)
    delta = tl.sum(b * h[:, None, :], axis=2)
    y_ptr = Y + rows[:, None] * sym + col + offs_n
    y = tl.load(y_ptr, mask=mn, other=0.0)
    tl.store(y_ptr, (y.to(tl.float32) + delta).to(y.dtype), mask=mn)


def k_splits(k: int) -> int:
    """How many K chunks (partials) the shrink of `k` input features writes."""
    return triton.cdiv(k, min(triton.next_power_of_2(k), K_CHUNK))


def shrink(
    x: torch.Tensor, h: torch.Tensor, a: list[torch.Tensor], slots: torch.Tensor,
    order: torch.Tensor, rows: int, rank: int,
) -> None:  # fmt: skip
    """Partials `h[split, row, i * rank : (i + 1) * rank]` of `x[row] @ a[i][slot].T` for the
    decode rows (`slots` per row, `order` the rows in program order, `rows` per program)."""
    d, k = slots.shape[0], x.shape[1]
    chunk = min(triton.next_power_of_2(k), K_CHUNK)
    a3 = (a * 3)[:3]
    _bgmv_shrink[(triton.cdiv(d, rows), len(a), k_splits(k))](
        x, a3[0], a3[1], a3[2], h, slots, order, d, k, x.stride(0), a[0].stride(0),
        a[0].stride(1), h.stride(0), h.stride(1), R=rank, T=rows,
        BLOCK_K=min(BLOCK_K, chunk), K_CHUNK=chunk,
    )  # fmt: skip


def expand(
    h: torch.Tensor, y: torch.Tensor, b: list[torch.Tensor], widths: list[int],
    slots: torch.Tensor, order: torch.Tensor, rows: int, rank: int,
) -> None:  # fmt: skip
    """`y[row, cols of module i] += h[:, row, i * rank : ...].sum(0) @ b[i][slot].T`."""
    d = slots.shape[0]
    b3, n3 = (b * 3)[:3], (widths + [0, 0])[:3]
    _bgmv_expand[(triton.cdiv(d, rows), triton.cdiv(max(widths), BLOCK_N), len(b))](
        h, b3[0], b3[1], b3[2], y, slots, order, d, n3[0], n3[1], n3[2],
        b3[0].stride(0), b3[1].stride(0), b3[2].stride(0), b[0].stride(1), h.stride(0),
        h.stride(1), y.stride(0), R=rank, T=rows, BLOCK_N=BLOCK_N, SPLITS=h.shape[0],
    )  # fmt: skip

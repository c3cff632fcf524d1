"""Triton LoRA kernels for CUDA, Punica-style: BGMV for decode rows (one token per row, the
adapter slot of each row read from a tensor, so a captured CUDA graph serves any mix) and
SGMV for prefill segments (tiles of up to 16 tokens of one adapter, tensor-core matmuls).

Each projection's correction is two launches per kind: shrink `h = x @ A[slot].T` (float32
`[T, R]`) then expand `y += h @ B[slot].T`. Slots hold zeros past an adapter's rank and for
the modules it does not target, so running every row at the slot width R is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deploylab.engine.lora.ops import slot_order

SEGMENT_TILE = 16  # SGMV rows per tile (tl.dot's minimum)
# BGMV shrink: input features per program. A decode row's shrink is a dot product of K
# features per rank; one program looping over all of K (8192 for down_proj) waited on one
# load after another, so K is split over programs and the expand sums the partials.
BGMV_K_CHUNK = 512
BGMV_BLOCK_K = 128


@triton.jit
def _shrink_row(
    X, A, SLOTS, row, K, sxm, sas, sar, R: tl.constexpr, BLOCK_K: tl.constexpr,
    K_CHUNK: tl.constexpr,
):  # fmt: skip
    """Columns `[split * K_CHUNK, (split + 1) * K_CHUNK)` of `x[row] @ A[slot].T` in float32
    (`[R]`) for one decode row (split = program axis 2); zeros for base-model rows (slot -1),
    which load nothing. A fixed trip count per program keeps the loads in flight together."""
    slot = tl.load(SLOTS + row)
    k_lo = tl.program_id(2) * K_CHUNK
    k_end = tl.where(slot >= 0, tl.minimum(k_lo + K_CHUNK, K), 0)
    slot = tl.maximum(slot, 0)
    offs_r = tl.arange(0, R)
    acc = tl.zeros([R], dtype=tl.float32)
    for k0 in tl.static_range(0, K_CHUNK, BLOCK_K):
        offs_k = k_lo + k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < k_end
        x = tl.load(X + row * sxm + offs_k, mask=mk, other=0.0).to(tl.float32)
        a_ptr = A + slot * sas + offs_r[:, None] * sar + offs_k[None, :]
        a = tl.load(a_ptr, mask=mk[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    return acc


@triton.jit
def _partial_sum(H, row, col, shs, shm, R: tl.constexpr, SPLITS: tl.constexpr):
    """`h[row, col : col + R]` summed over the shrink's K splits (a fixed order: the result
    does not depend on which program ran first)."""
    offs_r = tl.arange(0, R)
    h = tl.zeros([R], dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        h += tl.load(H + s * shs + row * shm + col + offs_r)
    return h


@triton.jit
def _bgmv_shrink(
    X, A, H, SLOTS, K, sxm, sas, sar, shs, shm,
    R: tl.constexpr, BLOCK_K: tl.constexpr, K_CHUNK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    acc = _shrink_row(X, A, SLOTS, row, K, sxm, sas, sar, R, BLOCK_K, K_CHUNK)
    tl.store(H + tl.program_id(2) * shs + row * shm + tl.arange(0, R), acc)


@triton.jit
def _bgmv_expand(
    H, B, Y, SLOTS, N, shs, shm, sbs, sbn, sym,
    R: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    slot = tl.load(SLOTS + row)
    n_end = tl.where(slot >= 0, N, 0)  # base-model rows are left as they are
    slot = tl.maximum(slot, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = offs_n < n_end
    offs_r = tl.arange(0, R)
    h = _partial_sum(H, row, 0, shs, shm, R, SPLITS)
    b_ptr = B + slot * sbs + offs_n[:, None] * sbn + offs_r[None, :]
    b = tl.load(b_ptr, mask=mn[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(b * h[None, :], axis=1)
    y = tl.load(Y + row * sym + offs_n, mask=mn, other=0.0)
    tl.store(Y + row * sym + offs_n, (y.to(tl.float32) + delta).to(y.dtype), mask=mn)


@triton.jit
def _sgmv_shrink(
    X, A, H, STARTS, LENS, SLOTS, K, sxm, sas, sar, shm,
    R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    start = tl.load(STARTS + tile)
    n = tl.load(LENS + tile)
    slot = tl.load(SLOTS + tile)
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, R)
    mm = offs_m < n
    acc = tl.zeros([BLOCK_M, R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < K
        x_ptr = X + (start + offs_m)[:, None] * sxm + offs_k[None, :]
        x = tl.load(x_ptr, mask=mm[:, None] & mk[None, :], other=0.0)
        a_ptr = A + slot * sas + offs_r[None, :] * sar + offs_k[:, None]
        a = tl.load(a_ptr, mask=mk[:, None], other=0.0)  # [BLOCK_K, R] = A[slot].T
        acc += tl.dot(x, a.to(x.dtype), input_precision="ieee")  # no TF32 for float32
    tl.store(H + (start + offs_m)[:, None] * shm + offs_r[None, :], acc, mask=mm[:, None])


@triton.jit
def _sgmv_expand(
    H, B, Y, STARTS, LENS, SLOTS, N, shm, sbs, sbn, sym,
    R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    start = tl.load(STARTS + tile)
    n = tl.load(LENS + tile)
    slot = tl.load(SLOTS + tile)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R)
    mm, mn = offs_m < n, offs_n < N
    h = tl.load(H + (start + offs_m)[:, None] * shm + offs_r[None, :], mask=mm[:, None], other=0.0)
    b_ptr = B + slot * sbs + offs_n[None, :] * sbn + offs_r[:, None]
    b = tl.load(b_ptr, mask=mn[None, :], other=0.0)  # [R, BLOCK_N] = B[slot].T
    delta = tl.dot(h.to(b.dtype), b, input_precision="ieee")
    y_ptr = Y + (start + offs_m)[:, None] * sym + offs_n[None, :]
    mask = mm[:, None] & mn[None, :]
    y = tl.load(y_ptr, mask=mask, other=0.0)
    tl.store(y_ptr, (y.to(tl.float32) + delta).to(y.dtype), mask=mask)


@triton.jit
def _bgmv_shrink_multi(
    X, A0, A1, A2, H, SLOTS, K, sxm, sas, sar, shs, shm,
    R: tl.constexpr, BLOCK_K: tl.constexpr, K_CHUNK: tl.constexpr,
):  # fmt: skip
    """BGMV shrink of up to 3 projections sharing the input (q/k/v, gate/up): program
    (row, module, split) writes split's partial of `H[row, module * R : (module + 1) * R]`."""
    row = tl.program_id(0)
    module = tl.program_id(1)
    if module == 0:
        a_base = A0
    elif module == 1:
        a_base = A1
    else:
        a_base = A2
    acc = _shrink_row(X, a_base, SLOTS, row, K, sxm, sas, sar, R, BLOCK_K, K_CHUNK)
    tl.store(H + tl.program_id(2) * shs + row * shm + module * R + tl.arange(0, R), acc)


@triton.jit
def _bgmv_expand_multi(
    H, B0, B1, B2, Y, SLOTS, N0, N1, N2, sbs0, sbs1, sbs2, sbn, shs, shm, sym,
    R: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
):  # fmt: skip
    """BGMV expand of up to 3 projections whose outputs are adjacent columns of Y."""
    row = tl.program_id(0)
    module = tl.program_id(2)
    if module == 0:
        b_base, n_mod, col, sbs = B0, N0, N0 - N0, sbs0  # col: a runtime 0, same type
    elif module == 1:
        b_base, n_mod, col, sbs = B1, N1, N0, sbs1
    else:
        b_base, n_mod, col, sbs = B2, N2, N0 + N1, sbs2
    slot = tl.load(SLOTS + row)
    n_end = tl.where(slot >= 0, n_mod, 0)
    slot = tl.maximum(slot, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = offs_n < n_end
    offs_r = tl.arange(0, R)
    h = _partial_sum(H, row, module * R, shs, shm, R, SPLITS)
    b_ptr = b_base + slot * sbs + offs_n[:, None] * sbn + offs_r[None, :]
    b = tl.load(b_ptr, mask=mn[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(b * h[None, :], axis=1)
    y_ptr = Y + row * sym + col + offs_n
    y = tl.load(y_ptr, mask=mn, other=0.0)
    tl.store(y_ptr, (y.to(tl.float32) + delta).to(y.dtype), mask=mn)


@triton.jit
def _bgmv_onepass(
    X, A0, A1, A2, B0, B1, B2, Y, SLOTS, ORDER, D, K, N0, N1, N2, sxm, sas0, sas1, sas2, sar,
    sbs0, sbs1, sbs2, sbn, sym,
    R: tl.constexpr, BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, BLOCK_N: tl.constexpr,
    N_TILES: tl.constexpr, T: tl.constexpr, HAS_ORDER: tl.constexpr,
):  # fmt: skip
    """Shrink and expand in one launch for up to 3 projections sharing the input: program
    (row tile, n_split, module) computes `h = x[row] @ A[slot].T` over all of K for its `T`
    rows (each n-split recomputes it from L2: one launch fewer is worth more at decode
    sizes), then adds `h @ B[slot].T` to its `N_TILES * BLOCK_N` columns of the module.
    With `ORDER` (rows sorted by slot) a tile's rows mostly share one adapter, so its A and
    B lines come from L1 once for the tile."""
    module = tl.program_id(2)
    if module == 0:
        a_base, b_base, n_mod, col, sas, sbs = A0, B0, N0, N0 - N0, sas0, sbs0
    elif module == 1:
        a_base, b_base, n_mod, col, sas, sbs = A1, B1, N1, N0, sas1, sbs1
    else:
        a_base, b_base, n_mod, col, sas, sbs = A2, B2, N2, N0 + N1, sas2, sbs2
    idx = tl.program_id(0) * T + tl.arange(0, T)
    valid = idx < D
    if HAS_ORDER:
        rows = tl.load(ORDER + idx, mask=valid, other=0)
    else:
        rows = idx
    slots = tl.load(SLOTS + rows, mask=valid, other=-1)
    n_lo = tl.program_id(1) * (N_TILES * BLOCK_N)
    live = (slots >= 0) & (n_lo < n_mod)  # base-model rows and columns past N load nothing
    k_end = tl.where(live, K, 0)[:, None]
    n_end = tl.where(live, n_mod, 0)[:, None]
    slots = tl.maximum(slots, 0)
    offs_r = tl.arange(0, R)
    a_rows = a_base + slots[:, None, None] * sas + offs_r[None, :, None] * sar  # [T, R, 1]
    b_rows = b_base + slots[:, None, None] * sbs + offs_r[None, None, :]  # [T, 1, R]
    h = tl.zeros([T, R], dtype=tl.float32)
    for kt in tl.static_range(K_TILES):
        offs_k = (kt * BLOCK_K + tl.arange(0, BLOCK_K))[None, :]
        mk = offs_k < k_end  # [T, BLOCK_K]
        x = tl.load(X + rows[:, None] * sxm + offs_k, mask=mk, other=0.0).to(tl.float32)
        a = tl.load(a_rows + offs_k[:, None, :], mask=mk[:, None, :], other=0.0).to(tl.float32)
        h += tl.sum(a * x[:, None, :], axis=2)
    for nt in range(N_TILES):  # a loop, not unrolled: up to 128 tiles
        offs_n = (n_lo + nt * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
        mn = offs_n < n_end  # [T, BLOCK_N]
        b = tl.load(b_rows + offs_n[:, :, None] * sbn, mask=mn[:, :, None], other=0.0).to(
            tl.float32
        )
        delta = tl.sum(b * h[:, None, :], axis=2)
        y_ptr = Y + rows[:, None] * sym + col + offs_n
        y = tl.load(y_ptr, mask=mn, other=0.0)
        tl.store(y_ptr, (y.to(tl.float32) + delta).to(y.dtype), mask=mn)


@dataclass(frozen=True)
class OnepassShape:
    """Launch shape of the one-pass decode kernel: K and N tile widths, columns a program
    covers, rows a program covers, warps."""

    block_k: int = 256
    block_n: int = 128
    cols: int = 2048
    rows: int = 1
    warps: int = 4


# Measured shapes by (K, widest module) (`benchmarks/lora_kernels.py`); else `OnepassShape()`.
ONEPASS_SHAPES: dict[tuple[int, int], OnepassShape] = {}


def onepass_shape(k: int, n: int) -> OnepassShape:
    """The launch shape for input width `k` and widest output `n`."""
    return ONEPASS_SHAPES.get((k, n), OnepassShape())


def _k_split(k: int) -> tuple[int, int]:
    """(K chunk per program, number of chunks) of a BGMV shrink over `k` input features."""
    chunk = min(triton.next_power_of_2(k), BGMV_K_CHUNK)
    return chunk, triton.cdiv(k, chunk)


# Decode launches: "overlap" two per projection group, the shrink on a side stream beside the
# base GEMM; "onepass" one per group; "fused" two per group; "split" two per projection.
DECODE_MODES = ("overlap", "onepass", "fused", "split")


@dataclass
class LoraStepPlan:
    """One step's kernel inputs: the first `num_decodes` rows take BGMV with a slot per row
    (`decode_slots`, -1 = base); the prefill rows take SGMV over `tiles` (start, len, slot).
    `decode`: one of `DECODE_MODES`; `decode_order`: the decode rows sorted by slot (for
    one-pass shapes of several rows a program), or None."""

    num_decodes: int
    decode_slots: torch.Tensor  # int32 [num_decodes]
    tiles: torch.Tensor | None  # int32 [3, num_tiles]
    rank: int
    decode: str = "onepass"
    decode_order: torch.Tensor | None = None
    side: torch.cuda.Stream | None = None  # "overlap": the stream of the decode shrink

    def apply(
        self,
        x: torch.Tensor,
        y: torch.Tensor | Callable[[], torch.Tensor],
        a: list[torch.Tensor],
        b: list[torch.Tensor],
        widths: list[int],
    ) -> torch.Tensor:
        """`y[:, cols of module i] += x @ A_i[slot].T @ B_i[slot].T` per row, for up to 3
        projections whose outputs are adjacent column ranges of `y` (contiguous columns);
        returns `y`. `y` may be a thunk computing the base outputs: in "overlap" mode the
        decode shrink then runs on a side stream beside it."""
        x = x.contiguous()
        rows, k = x.shape
        r, count = self.rank, len(a)
        d = self.num_decodes
        hd = None
        if d and self.decode != "onepass":  # one partial shrink result per K split
            hd = torch.empty(_k_split(k)[1], d, count * r, dtype=torch.float32, device=x.device)
        if hd is not None and self.decode == "overlap" and self.side is not None:
            main = torch.cuda.current_stream(x.device)
            self.side.wait_stream(main)
            with torch.cuda.stream(self.side):
                self._shrink_fused(x, hd, a)
            y = y() if callable(y) else y
            main.wait_stream(self.side)
            self._expand_fused(hd, y, b, widths)
        else:
            y = y() if callable(y) else y
            if d and self.decode == "onepass":
                self._decode_onepass(x, y, a, b, widths)
            elif hd is not None and self.decode in ("fused", "overlap"):
                self._shrink_fused(x, hd, a)
                self._expand_fused(hd, y, b, widths)
        if self.tiles is None and self.decode != "split":
            return y
        h = torch.empty(rows, count * r, dtype=torch.float32, device=x.device)
        offs = [sum(widths[:i]) for i in range(count)]
        for i in range(count):
            hi, yi = h[:, i * r : (i + 1) * r], y[:, offs[i] : offs[i] + widths[i]]
            if hd is not None and self.decode == "split":
                self._decode_one(x, yi, hd[:, :, i * r : (i + 1) * r], a[i], b[i])
            if self.tiles is not None:
                self._segments(x, yi, hi, a[i], b[i])
        return y

    def _decode_onepass(
        self, x: torch.Tensor, y: torch.Tensor, a: list[torch.Tensor], b: list[torch.Tensor],
        widths: list[int],
    ) -> None:  # fmt: skip
        d, k, count = self.num_decodes, x.shape[1], len(a)
        a3, b3 = (a * 3)[:3], (b * 3)[:3]
        n3 = (widths + [0, 0])[:3]
        shape = onepass_shape(k, max(widths))
        block_k = min(shape.block_k, triton.next_power_of_2(k))
        block_n = min(shape.block_n, triton.next_power_of_2(max(widths)))
        cols = max(block_n, min(shape.cols, max(widths)))
        n_tiles = triton.cdiv(cols, block_n)
        has_order = self.decode_order is not None and shape.rows > 1
        rows = shape.rows if has_order else 1
        order = self.decode_order if has_order else self.decode_slots
        grid = (triton.cdiv(d, rows), triton.cdiv(max(widths), n_tiles * block_n), count)
        _bgmv_onepass[grid](
            x, a3[0], a3[1], a3[2], b3[0], b3[1], b3[2], y, self.decode_slots, order, d, k,
            n3[0], n3[1], n3[2], x.stride(0), a3[0].stride(0), a3[1].stride(0),
            a3[2].stride(0), a[0].stride(1), b3[0].stride(0), b3[1].stride(0),
            b3[2].stride(0), b[0].stride(1), y.stride(0), R=self.rank, BLOCK_K=block_k,
            K_TILES=triton.cdiv(k, block_k), BLOCK_N=block_n, N_TILES=n_tiles, T=rows,
            HAS_ORDER=has_order, num_warps=shape.warps,
        )  # fmt: skip

    def _shrink_fused(self, x: torch.Tensor, h: torch.Tensor, a: list[torch.Tensor]) -> None:
        """Partial shrink results of every projection of the group, one launch."""
        a3 = (a * 3)[:3]
        chunk, splits = _k_split(x.shape[1])
        _bgmv_shrink_multi[(self.num_decodes, len(a), splits)](
            x, a3[0], a3[1], a3[2], h, self.decode_slots, x.shape[1], x.stride(0),
            a[0].stride(0), a[0].stride(1), h.stride(0), h.stride(1), R=self.rank,
            BLOCK_K=min(BGMV_BLOCK_K, chunk), K_CHUNK=chunk,
        )  # fmt: skip

    def _expand_fused(
        self, h: torch.Tensor, y: torch.Tensor, b: list[torch.Tensor], widths: list[int]
    ) -> None:
        """`y += h @ B.T` for every projection of the group, summing the partials, one launch."""
        b3, n3 = (b * 3)[:3], (widths + [0, 0])[:3]
        _bgmv_expand_multi[(self.num_decodes, triton.cdiv(max(widths), 128), len(b))](
            h, b3[0], b3[1], b3[2], y, self.decode_slots, n3[0], n3[1], n3[2],
            b3[0].stride(0), b3[1].stride(0), b3[2].stride(0), b[0].stride(1), h.stride(0),
            h.stride(1), y.stride(0), R=self.rank, BLOCK_N=128, SPLITS=h.shape[0],
        )  # fmt: skip

    def _decode_one(
        self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> None:
        d, r, n = self.num_decodes, self.rank, y.shape[1]
        chunk, splits = _k_split(x.shape[1])
        _bgmv_shrink[(d, 1, splits)](
            x, a, h, self.decode_slots, x.shape[1], x.stride(0), a.stride(0), a.stride(1),
            h.stride(0), h.stride(1), R=r, BLOCK_K=min(BGMV_BLOCK_K, chunk), K_CHUNK=chunk,
        )  # fmt: skip
        _bgmv_expand[(d, triton.cdiv(n, 128))](
            h, b, y, self.decode_slots, n, h.stride(0), h.stride(1), b.stride(0), b.stride(1),
            y.stride(0), R=r, BLOCK_N=128, SPLITS=splits,
        )  # fmt: skip

    def _segments(
        self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> None:
        assert self.tiles is not None
        starts, lens, slots = self.tiles
        m, r, n = starts.shape[0], self.rank, y.shape[1]
        _sgmv_shrink[(m,)](
            x, a, h, starts, lens, slots, x.shape[1], x.stride(0), a.stride(0), a.stride(1),
            h.stride(0), R=r, BLOCK_M=SEGMENT_TILE, BLOCK_K=64,
        )  # fmt: skip
        _sgmv_expand[(m, triton.cdiv(n, 64))](
            h, b, y, starts, lens, slots, n, h.stride(0), b.stride(0), b.stride(1),
            y.stride(0), R=r, BLOCK_M=SEGMENT_TILE, BLOCK_N=64,
        )  # fmt: skip


class LoraKernels:
    """Builds each step's `LoraStepPlan` from its row layout."""

    def __init__(self, decode: str = "overlap") -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        self._side: dict[torch.device, torch.cuda.Stream] = {}

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream | None:
        """The side stream of "overlap" mode on `device` (None off CUDA)."""
        if self.decode != "overlap" or device.type != "cuda":
            return None
        if device not in self._side:
            self._side[device] = torch.cuda.Stream(device)
        return self._side[device]

    def plan(
        self, decode_slots: list[int], segments: list[tuple[int, int, int]], rank: int,
        device: torch.device,
    ) -> LoraStepPlan:  # fmt: skip
        """Decode rows' slots and prefill segments (start row, length, slot >= 0)."""
        starts: list[int] = []
        lens: list[int] = []
        slots: list[int] = []
        for start, length, slot in segments:
            for s in range(start, start + length, SEGMENT_TILE):
                starts.append(s)
                lens.append(min(SEGMENT_TILE, start + length - s))
                slots.append(slot)
        order = slot_order(decode_slots)
        packed = torch.tensor(decode_slots + order + starts + lens + slots, dtype=torch.int32)
        packed = packed.to(device, non_blocking=True)
        d = len(decode_slots)
        tiles = packed[2 * d :].view(3, -1) if starts else None
        side = self._side_stream(torch.device(device))
        return LoraStepPlan(d, packed[:d], tiles, rank, self.decode, packed[d : 2 * d], side)

    def graph_plan(self, slots_and_order: torch.Tensor, rank: int) -> LoraStepPlan:
        """A decode-only plan reading the static `[slots..., slot_order(slots)...]` tensor
        (int32, 2n) of a captured CUDA graph."""
        n = slots_and_order.shape[0] // 2
        return LoraStepPlan(n, slots_and_order[:n], None, rank, self.decode, slots_and_order[n:])


def check_kernels(device: torch.device, decode: str) -> None:
    """Run the kernels once on small random data against torch; raise on any difference
    (the start-up self-check: a kernel that fails to compile or is wrong is never used)."""
    gen = torch.Generator().manual_seed(0)
    k, r, widths = 96, 16, [80, 48, 48]
    a = [torch.randn(3, r, k, generator=gen) for _ in widths]
    b = [torch.randn(3, n, r, generator=gen) for n in widths]
    x = torch.randn(21, k, generator=gen)
    y = torch.randn(21, sum(widths), generator=gen)
    decode_slots, segments = [2, -1, 0], [(3, 18, 1)]
    row_slots = decode_slots + [1] * 18
    want = y.clone()
    for i, s in enumerate(row_slots):
        if s >= 0:
            want[i] += torch.cat([(x[i] @ ai[s].T) @ bi[s].T for ai, bi in zip(a, b, strict=True)])
    plan = LoraKernels(decode).plan(decode_slots, segments, r, device)
    base = y.to(device)
    dev_a, dev_b = [t.to(device) for t in a], [t.to(device) for t in b]
    got = plan.apply(x.to(device), lambda: base, dev_a, dev_b, widths)
    torch.testing.assert_close(got.cpu(), want, rtol=2e-2, atol=2e-1)

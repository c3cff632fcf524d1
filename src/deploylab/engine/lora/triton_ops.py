"""Triton LoRA kernels for CUDA, Punica-style: BGMV for decode rows (`triton_bgmv`) and SGMV
for prefill segments (tiles of up to 16 tokens of one adapter, tensor-core matmuls), and the
step plan that runs them.

Each projection's correction is a shrink `h = x @ A[slot].T` (float32 `[T, R]`) then an
expand `y += h @ B[slot].T`. Slots hold zeros past an adapter's rank and for the modules it
does not target, so running every row at the slot width R is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext as _nothing
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deploylab.engine.lora import triton_bgmv
from deploylab.engine.lora.ops import slots_and_order

SEGMENT_TILE = 16  # SGMV rows per tile (tl.dot's minimum)
# Decode rows per BGMV program in "tiles" mode (rows sorted by slot). H100, 64 rows over 16
# adapters: 8 gave the decode step 1.20-1.31x the base's, 4 and 16 gave 1.46x.
TILE_ROWS = 8  # a power of 2 (a tl.arange length)


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


# Decode launches, in the order the engine tries them: "tiles" one shrink/expand pair per
# projection group, `TILE_ROWS` rows sorted by slot per program (H100: decode step 1.30x the
# base's, median of 4 runs); "fused" the same with one row per program (1.33x, 3 runs);
# "split" one pair per projection. With `overlap` the shrink runs on a side stream beside
# the base GEMM.
DECODE_MODES = ("tiles", "fused", "split")


@dataclass
class LoraStepPlan:
    """One step's kernel inputs: the first `num_decodes` rows take BGMV with a slot per row
    (`decode_slots`, -1 = base; `decode_order` the rows sorted by slot); the prefill rows take
    SGMV over `tiles` (start, len, slot). `decode`: one of `DECODE_MODES`; `side`: the side
    stream of the decode shrink (None: on the current stream)."""

    num_decodes: int
    decode_slots: torch.Tensor  # int32 [num_decodes]
    decode_order: torch.Tensor  # int32 [num_decodes]
    tiles: torch.Tensor | None  # int32 [3, num_tiles]
    rank: int
    decode: str = "fused"
    side: torch.cuda.Stream | None = None

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
        returns `y`. `y` may be a thunk computing the base outputs: with a side stream the
        decode shrink runs beside it."""
        x = x.contiguous()
        d, r, count = self.num_decodes, self.rank, len(a)
        if d and self.decode == "split":
            y = y() if callable(y) else y
            self._decode_split(x, y, a, b, widths)
        elif d:
            hd = torch.empty(
                triton_bgmv.k_splits(x.shape[1]), d, count * r, dtype=torch.float32,
                device=x.device,
            )  # fmt: skip
            main = torch.cuda.current_stream(x.device) if self.side is not None else None
            if main is not None:
                self.side.wait_stream(main)  # type: ignore[union-attr]
            with torch.cuda.stream(self.side) if main is not None else _nothing():
                triton_bgmv.shrink(x, hd, a, self.decode_slots, self.decode_order, self._rows, r)
            y = y() if callable(y) else y
            if main is not None:
                main.wait_stream(self.side)  # type: ignore[arg-type]
            triton_bgmv.expand(
                hd, y, b, widths, self.decode_slots, self.decode_order, self._rows, r
            )  # fmt: skip
        else:
            y = y() if callable(y) else y
        if self.tiles is not None:
            h = torch.empty(x.shape[0], count * r, dtype=torch.float32, device=x.device)
            offs = [sum(widths[:i]) for i in range(count)]
            for i in range(count):
                yi = y[:, offs[i] : offs[i] + widths[i]]
                self._segments(x, yi, h[:, i * r : (i + 1) * r], a[i], b[i])
        return y

    @property
    def _rows(self) -> int:
        return TILE_ROWS if self.decode == "tiles" else 1

    def _decode_split(
        self, x: torch.Tensor, y: torch.Tensor, a: list[torch.Tensor], b: list[torch.Tensor],
        widths: list[int],
    ) -> None:  # fmt: skip
        """One shrink/expand pair per projection (the fallback of the self-check)."""
        d, r, off = self.num_decodes, self.rank, 0
        for ai, bi, n in zip(a, b, widths, strict=True):
            h = torch.empty(triton_bgmv.k_splits(x.shape[1]), d, r, dtype=torch.float32,
                            device=x.device)  # fmt: skip
            triton_bgmv.shrink(x, h, [ai], self.decode_slots, self.decode_order, 1, r)
            triton_bgmv.expand(
                h, y[:, off : off + n], [bi], [n], self.decode_slots, self.decode_order, 1, r
            )  # fmt: skip
            off += n

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

    def __init__(self, decode: str = "fused", overlap: bool = True) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        self.overlap = overlap
        self._side: dict[torch.device, torch.cuda.Stream] = {}

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream | None:
        """The side stream of the decode shrink on `device` (None off CUDA or without
        `overlap`)."""
        if not self.overlap or self.decode == "split" or device.type != "cuda":
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
        packed = torch.tensor(
            slots_and_order(decode_slots) + starts + lens + slots, dtype=torch.int32
        )
        packed = packed.to(device, non_blocking=True)
        d = len(decode_slots)
        tiles = packed[2 * d :].view(3, -1) if starts else None
        side = self._side_stream(torch.device(device))
        return LoraStepPlan(d, packed[:d], packed[d : 2 * d], tiles, rank, self.decode, side)

    def graph_plan(self, slots_and_order: torch.Tensor, rank: int) -> LoraStepPlan:
        """A decode-only plan reading the static `[slots..., slot_order(slots)...]` tensor
        (int32, 2n) of a captured CUDA graph."""
        n = slots_and_order.shape[0] // 2
        side = self._side_stream(slots_and_order.device)
        return LoraStepPlan(
            n, slots_and_order[:n], slots_and_order[n:], None, rank, self.decode, side
        )


def check_kernels(device: torch.device, decode: str) -> None:
    """Run the kernels once on small random data against torch; raise on any difference
    (the start-up self-check: a kernel that fails to compile or is wrong is never used)."""
    gen = torch.Generator().manual_seed(0)
    k, r, widths = 96, 16, [80, 48, 48]
    a = [torch.randn(3, r, k, generator=gen) for _ in widths]
    b = [torch.randn(3, n, r, generator=gen) for n in widths]
    x = torch.randn(21, k, generator=gen)
    y = torch.randn(21, sum(widths), generator=gen)
    decode_slots, segments = [2, -1, 0, 2, 1, 0, -1], [(7, 14, 1)]  # 2 row tiles, one ragged
    row_slots = decode_slots + [1] * 14
    want = y.clone()
    for i, s in enumerate(row_slots):
        if s >= 0:
            want[i] += torch.cat([(x[i] @ ai[s].T) @ bi[s].T for ai, bi in zip(a, b, strict=True)])
    plan = LoraKernels(decode).plan(decode_slots, segments, r, device)
    base = y.to(device)
    dev_a, dev_b = [t.to(device) for t in a], [t.to(device) for t in b]
    got = plan.apply(x.to(device), lambda: base, dev_a, dev_b, widths)
    torch.testing.assert_close(got.cpu(), want, rtol=2e-2, atol=2e-1)

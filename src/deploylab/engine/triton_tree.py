"""Tree-attention decode as Triton kernels (CUDA; checked on the CPU with Triton's interpreter).

Runs a `TreePlan` (see `tree_attention.py`): one program per (task, KV head) loads the task's
keys and values tile by tile straight from the paged cache, once, and multiplies them with
the queries of every row of the task (rows x the query heads of the KV head are the rows of
the dot products), keeping an online softmax in float32; it stores one partial (max, sum,
weighted values) per row. A second kernel merges each row's partials by log-sum-exp.

Wide tasks (several rows) and solo tasks (one row) are launched separately so a solo task
does not pay for 16 rows of padding in its dot products.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deploylab.engine.tree_attention import (
    NO_MASK,
    TreePlan,
    build_tree_plan,
    tree_decode_reference,
)

TILE = 64
ROWS_WIDE = 64  # dot-product rows of a wide task: rows x padded query-head group


@dataclass
class DeviceTreePlan:
    """A `TreePlan`'s arrays on the device (one int32 buffer) plus its sizes."""

    tasks: torch.Tensor  # [T * 6]
    blocks: torch.Tensor
    part_rows: torch.Tensor
    row_part_start: torch.Tensor
    row_parts: torch.Tensor
    num_tasks: int
    num_wide: int
    num_parts: int
    num_rows: int


def _group_pad(group: int) -> int:
    """Query heads per KV head, rounded up to a power of two (the kernels' row blocks)."""
    return 1 << max(0, (group - 1).bit_length())


def rows_per_task(heads: int, kv_heads: int) -> int:
    """The most rows a wide task may hold for this head shape (the plan's limit)."""
    return max(1, ROWS_WIDE // _group_pad(heads // kv_heads))


def to_device(plan: TreePlan, device: torch.device) -> DeviceTreePlan:
    """Copy the plan's arrays to `device` in one transfer."""
    parts = [
        plan.tasks.reshape(-1),
        plan.blocks,
        plan.part_rows,
        plan.row_part_start,
        plan.row_parts,
    ]
    # A plain copy: pinning a fresh host buffer every step would cost more than it saves on a
    # few kilobytes (graph replays reuse StaticTreePlan's pinned buffer instead).
    dev = torch.from_numpy(np.concatenate(parts).astype(np.int32)).to(device)
    tasks, blocks, part_rows, starts, row_parts = torch.split(dev, [p.size for p in parts])
    return DeviceTreePlan(
        tasks,
        blocks,
        part_rows,
        starts,
        row_parts,
        num_tasks=len(plan.tasks),
        num_wide=plan.num_wide,
        num_parts=int(plan.part_rows.size),
        num_rows=plan.num_rows,
    )


@functools.cache
def _kernels() -> tuple[Any, Any]:
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["task0"])
    def _partial(  # type: ignore[no-untyped-def]
        Q, K, V, TASKS, BLOCKS, PROWS, MSTART, MBITS, M, L, ACC, scale, task0,
        stride_qb, stride_qh, stride_kh, stride_kb, num_heads,
        HAS_MASK: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
        ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        TILE: tl.constexpr,
    ):  # fmt: skip
        task = TASKS + (task0 + tl.program_id(0)) * 6
        kvh = tl.program_id(1)
        b0 = tl.load(task)
        off = tl.load(task + 1)
        ntok = tl.load(task + 2)
        p0 = tl.load(task + 3)
        nq = tl.load(task + 4)
        r = tl.arange(0, ROWS)
        j = r // GROUP_PAD
        g = r % GROUP_PAD
        live = j < nq
        rvalid = live & (g < GROUP)
        d = tl.arange(0, HEAD_DIM)
        row = tl.load(PROWS + p0 + j, mask=live, other=0)
        heads = kvh * GROUP + g
        q = tl.load(
            Q + row[:, None] * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=rvalid[:, None],
            other=0.0,
        )
        if HAS_MASK:
            pos0 = tl.load(task + 5)
            mstart = tl.load(MSTART + row, mask=live, other=1 << 30)
            mbits = tl.load(MBITS + row, mask=live, other=0)
        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
        t = tl.arange(0, TILE)
        for start in range(0, ntok, TILE):
            p = start + t
            valid = p < ntok
            a = off + p
            blk = tl.load(BLOCKS + b0 + a // BLOCK_SIZE, mask=valid, other=0)
            koff = kvh * stride_kh + blk.to(tl.int64) * stride_kb + (a % BLOCK_SIZE) * HEAD_DIM
            k = tl.load(K + koff[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # no TF32 for fp32
            vis = valid[None, :] & (r >= 0)[:, None]
            if HAS_MASK:
                sh = (pos0 + p)[None, :] - mstart[:, None]
                bit = (mbits[:, None] >> tl.minimum(tl.maximum(sh, 0), 63).to(tl.int64)) & 1
                vis = vis & ((sh < 0) | (bit != 0))
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            pr = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(pr, 1)
            v = tl.load(V + koff[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v, input_precision="ieee")
            m_i = m_new
        slot = (p0 + j) * num_heads + heads
        tl.store(M + slot, m_i, mask=rvalid)
        tl.store(L + slot, l_i, mask=rvalid)
        tl.store(ACC + slot[:, None] * HEAD_DIM + d[None, :], acc, mask=rvalid[:, None])

    @triton.jit
    def _merge(  # type: ignore[no-untyped-def]
        OUT, M, L, ACC, RSTART, RPARTS, stride_ob, stride_oh, num_heads,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        gm = g < GROUP
        heads = kvh * GROUP + g
        lo = tl.load(RSTART + b)
        hi = tl.load(RSTART + b + 1)
        m_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        for s in range(lo, hi):
            slot = tl.load(RPARTS + s) * num_heads + heads
            m_max = tl.maximum(m_max, tl.load(M + slot, mask=gm, other=float("-inf")))
        total = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for s in range(lo, hi):
            slot = tl.load(RPARTS + s) * num_heads + heads
            m_s = tl.load(M + slot, mask=gm, other=float("-inf"))
            # A partial that saw no visible key has m = -inf and l = 0: weight 0.
            w = tl.where(m_s > float("-inf"), tl.exp(m_s - m_max), 0.0)
            total += w * tl.load(L + slot, mask=gm, other=0.0)
            a = tl.load(ACC + slot[:, None] * HEAD_DIM + d[None, :], mask=gm[:, None], other=0.0)
            acc += w[:, None] * a
        out = acc / total[:, None]
        tl.store(
            OUT + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(OUT.dtype.element_ty),
            mask=gm[:, None],
        )

    return _partial, _merge


TreeDecodeFn = Callable[..., torch.Tensor]


def tree_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: DeviceTreePlan,
    scale: float,
    mask_start: torch.Tensor | None = None,
    mask_bits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tree attention of a decode step. q `[B, H, d]` (B = plan rows), caches
    `[kv_heads, num_blocks, block_size, d]`; optional tail masks `[B]` (int32 / int64)."""
    partial, merge = _kernels()
    batch, heads, dim = q.shape
    kv_heads, _, block_size, _ = k_cache.shape
    group = heads // kv_heads
    group_pad = _group_pad(group)
    m = torch.empty(plan.num_parts * heads, dtype=torch.float32, device=q.device)
    l_ = torch.empty_like(m)
    acc = torch.empty(plan.num_parts * heads * dim, dtype=torch.float32, device=q.device)
    has_mask = mask_start is not None and mask_bits is not None
    if not has_mask:
        mask_start = mask_bits = plan.tasks  # unread placeholders
    common = dict(
        HAS_MASK=has_mask, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=dim,
        BLOCK_SIZE=block_size, TILE=max(TILE, block_size),
    )  # fmt: skip
    launches = (
        (0, plan.num_wide, max(16, rows_per_task(heads, kv_heads) * group_pad)),
        (plan.num_wide, plan.num_tasks - plan.num_wide, max(16, group_pad)),
    )
    for task0, count, rows in launches:
        if count:
            partial[(count, kv_heads)](
                q, k_cache, v_cache, plan.tasks, plan.blocks, plan.part_rows,
                mask_start, mask_bits, m, l_, acc, scale, task0,
                q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), heads,
                ROWS=rows, **common,
            )  # fmt: skip
    out = torch.empty_like(q)
    merge[(batch, kv_heads)](
        out, m, l_, acc, plan.row_part_start, plan.row_parts, out.stride(0), out.stride(1),
        heads, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=dim,
    )  # fmt: skip
    return out


def mask_arrays(
    starts: list[int] | None, bits: list[int] | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Tail-mask tensors for `tree_decode` (None, None when no row has a mask)."""
    if starts is None or bits is None:
        return None, None
    s = torch.tensor([NO_MASK if x is None else x for x in starts], dtype=torch.int32)
    b = torch.tensor(bits, dtype=torch.int64)
    return s.to(device), b.to(device)


class StaticTreePlan:
    """Fixed-capacity plan buffers for a captured CUDA graph: the kernels' grids are the
    capacities, unused tasks have no rows and no tokens, `load` refills the buffers in place."""

    def __init__(
        self, rows: int, max_blocks: int, rows_per_task: int, device: torch.device
    ) -> None:
        self.rows = rows
        self.wide_cap = 256
        self.solo_cap = 2 * rows + 64
        self.parts_cap = self.wide_cap * rows_per_task + self.solo_cap
        self.blocks_cap = rows * max_blocks + self.wide_cap + self.solo_cap
        tasks = (self.wide_cap + self.solo_cap) * 6
        self.sizes = [tasks, self.blocks_cap, self.parts_cap, rows + 1, self.parts_cap]
        total = sum(self.sizes)
        self.host = torch.zeros(total, dtype=torch.int32, pin_memory=device.type == "cuda")
        self.buf = torch.zeros(total, dtype=torch.int32, device=device)
        tasks_v, blocks, part_rows, starts, row_parts = torch.split(self.buf, self.sizes)
        self.plan = DeviceTreePlan(
            tasks_v,
            blocks,
            part_rows,
            starts,
            row_parts,
            num_tasks=self.wide_cap + self.solo_cap,
            num_wide=self.wide_cap,
            num_parts=self.parts_cap,
            num_rows=rows,
        )

    def fits(self, plan: TreePlan) -> bool:
        """Whether `plan` fits these capacities."""
        return (
            plan.num_rows <= self.rows
            and plan.num_wide <= self.wide_cap
            and len(plan.tasks) - plan.num_wide <= self.solo_cap
            and plan.part_rows.size <= self.parts_cap
            and plan.blocks.size <= self.blocks_cap
        )

    def load(self, plan: TreePlan) -> None:
        """Copy `plan` into the buffers (padding tasks empty, padding rows without partials)."""
        h = self.host.numpy()
        h[:] = 0
        at = 0
        tasks = np.zeros((self.wide_cap + self.solo_cap, 6), dtype=np.int32)
        tasks[: plan.num_wide] = plan.tasks[: plan.num_wide]
        solo = plan.tasks[plan.num_wide :]
        tasks[self.wide_cap : self.wide_cap + len(solo)] = solo
        h[: tasks.size] = tasks.reshape(-1)
        at = self.sizes[0]
        h[at : at + plan.blocks.size] = plan.blocks
        at += self.sizes[1]
        h[at : at + plan.part_rows.size] = plan.part_rows
        at += self.sizes[2]
        starts = h[at : at + self.rows + 1]
        starts[: plan.num_rows + 1] = plan.row_part_start
        starts[plan.num_rows + 1 :] = plan.row_part_start[-1]
        at += self.sizes[3]
        h[at : at + plan.row_parts.size] = plan.row_parts
        self.buf.copy_(self.host, non_blocking=True)

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        tables: torch.Tensor | None,
        lens: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """The paged-decode signature; block tables and lengths come from the loaded plan."""
        return tree_decode(q, k_cache, v_cache, self.plan, scale)


class TreeDecoder:
    """Decides per decode step whether tree attention pays and builds its plan.

    The defaults follow the H100 crossover grid (docs/benchmarks.md, 23 cases of width 2-64
    and shared prefix 0-32k): the tree kernel won exactly where it saved at least 12,288 KV
    token reads per KV head in all and 768 per row; below that (short prefixes, two
    branches of 4k) the plain kernel was faster."""

    def __init__(
        self,
        heads: int,
        kv_heads: int,
        block_size: int,
        min_savings: float = 0.25,
        programs: int = 264,
        min_saved_tokens: int = 12288,
        min_saved_per_row: int = 768,
    ) -> None:
        self.block_size = block_size
        self.rows_per_task = rows_per_task(heads, kv_heads)
        self.min_savings = min_savings
        self.min_saved_tokens = min_saved_tokens
        self.min_saved_per_row = min_saved_per_row
        # Wide tasks to aim for: `programs` (about two per multiprocessor) over the KV heads.
        self.target_wide_tasks = max(1, programs // kv_heads)
        self.steps = 0  # decode steps that ran tree attention
        self.verify_steps = 0  # steps whose token-tree verify chunks ran it

    def plan(self, tables: list[list[int]], lens: list[int]) -> TreePlan | None:
        """The step's plan, or None when rows share no blocks or too few reads are saved."""
        if len(lens) < 2 or len({t[0] for t in tables if t}) == len(tables):
            return None  # the cheap test: shared blocks always include the first one
        plan = build_tree_plan(
            tables,
            lens,
            self.block_size,
            max_rows_per_task=self.rows_per_task,
            max_wide_tasks=256,
            target_wide_tasks=self.target_wide_tasks,
        )
        saved = plan.tokens_plain - plan.tokens_read
        pays = (
            plan.savings >= self.min_savings
            and saved >= self.min_saved_tokens
            and saved >= self.min_saved_per_row * len(lens)
        )
        return plan if pays else None

    def eager(self, plan: TreePlan, device: torch.device) -> Callable[..., torch.Tensor]:
        """A paged-decode-shaped kernel running `plan` (eager steps; the Triton kernels on
        CUDA, the grouped torch path elsewhere)."""
        if device.type != "cuda":

            def grouped(q, k_cache, v_cache, tables, lens, scale):  # type: ignore[no-untyped-def]
                return tree_decode_reference(q, k_cache, v_cache, plan, scale)

            self.steps += 1
            return grouped
        dplan = to_device(plan, device)

        def run(q, k_cache, v_cache, tables, lens, scale):  # type: ignore[no-untyped-def]
            return tree_decode(q, k_cache, v_cache, dplan, scale)

        self.steps += 1
        return run

"""Tree attention (DeFT-style): decode rows that share KV blocks read each shared run once.

When several decode rows share the leading blocks of their block tables (`n > 1` samples
forked from one prompt, prefix-cache hits, the nodes of a speculation tree), the plain paged
kernel reads the shared prefix once per row. Here the step's KV is cut into *segments* by
KV-guided grouping: rows sorted by block table, the longest common prefix of neighbours gives
an interval tree, and each node of that tree is one segment (a token range of one block table)
together with the set of rows that attend to it. Every segment is read once for all its rows,
each (segment, row) pair leaves a partial softmax (max, sum, weighted values), and a second pass
merges a row's partials by log-sum-exp.

`build_tree_plan` makes the plan on the host (numpy; O(B log B + B x W)),
`tree_decode_reference` runs it with torch ops (the CPU path and the Triton kernel's test
oracle), `dense_tree_reference` is plain masked attention over each row's gathered context.
Rows may carry a *tail mask* (speculation trees): positions `>= mask_start[r]` are visible to
row r only where bit `pos - mask_start[r]` of `mask_bits[r]` is set (at most 64 such positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NO_MASK = 1 << 30  # mask_start of a row without a tail mask


@dataclass
class TreePlan:
    """Tasks of a tree-attention step (host arrays; `to_device` packs them).

    A task reads `ntok` tokens of one block table starting at token `tok_off` of block
    `blocks[block_start]` (absolute position `pos0` of its rows), for `nq` rows whose
    partial results go to slots `part_start ... part_start + nq - 1`; `part_rows[slot]` is
    the row of a slot. Wide tasks (several rows)
    come first, then solo tasks (one row)."""

    tasks: np.ndarray  # [T, 6] int32: block_start, tok_off, ntok, part_start, nq, pos0
    num_wide: int
    blocks: np.ndarray  # [NB] int32
    part_rows: np.ndarray  # [P] int32
    row_part_start: np.ndarray  # [B + 1] int32, offsets into row_parts
    row_parts: np.ndarray  # [P] int32, partial slots grouped by row
    tokens_read: int  # KV tokens read per KV head by this plan
    tokens_plain: int  # ... and by the plain kernel (sum of context lengths)

    @property
    def num_rows(self) -> int:
        """Decode rows of the step."""
        return len(self.row_part_start) - 1

    @property
    def savings(self) -> float:
        """Fraction of the plain kernel's KV reads this plan avoids."""
        return 1.0 - self.tokens_read / max(1, self.tokens_plain)


def _common_blocks(a: Sequence[int], b: Sequence[int], hi: int) -> int:
    """Length of the common prefix of two block tables, at most `hi` (binary search on
    slice equality, which runs in C)."""
    if hi == 0 or a[0] != b[0]:
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _segments(
    tables: Sequence[Sequence[int]], lens: Sequence[int], block_size: int
) -> list[tuple[int, int, int, list[int]]]:
    """(table row, first token, end token, rows) of every segment, shared ones first."""
    b = len(lens)
    rows = sorted(range(b), key=lambda r: list(tables[r]))  # shared prefixes are neighbours
    lcp = []
    for x, y in zip(rows, rows[1:], strict=False):
        hi = min(len(tables[x]), len(tables[y]))
        common = _common_blocks(tables[x], tables[y], hi) * block_size
        lcp.append(min(common, lens[x], lens[y]))
    shared: list[tuple[int, int, int, list[int]]] = []
    stack: list[tuple[int, int]] = [(0, 0)]  # (depth in tokens, leftmost sorted index)
    for i in range(b):
        h = lcp[i] if i < b - 1 else 0
        left = i
        while stack[-1][0] > h:
            depth, left = stack.pop()
            parent = max(h, stack[-1][0])
            shared.append((rows[left], parent, depth, rows[left : i + 1]))
        if stack[-1][0] < h:
            stack.append((h, left))
    own = []
    for i in range(b):
        start = max(lcp[i - 1] if i > 0 else 0, lcp[i] if i < b - 1 else 0)
        if lens[rows[i]] > start:
            own.append((rows[i], start, lens[rows[i]], [rows[i]]))
    return shared + own


def build_tree_plan(
    tables: Sequence[Sequence[int]],
    lens: Sequence[int],
    block_size: int,
    *,
    chunk_tokens: int = 512,
    max_rows_per_task: int = 16,
    max_wide_tasks: int | None = None,
    target_wide_tasks: int | None = None,
    segments: list[tuple[int, int, int, list[int]]] | None = None,
) -> TreePlan:
    """Group a decode step's rows by the KV blocks they share (see the module docstring).

    `tables[r]` is row r's block table and `lens[r]` its context length (new token included).
    Segments longer than `chunk_tokens` are split (more programs for the GPU; the chunk
    doubles until at most `max_wide_tasks` wide tasks remain), and a segment with more than
    `max_rows_per_task` rows becomes several tasks. With `target_wide_tasks`, the chunk
    shrinks (to 64 tokens at least) until shared segments give about that many tasks, so a
    short shared prefix still occupies the GPU. `segments` ((table row, first token, end
    token, rows), shared ones first) skips the grouping when the caller knows it."""
    if len(tables) != len(lens) or not lens or min(lens) < 1:
        raise ValueError("tree attention needs one block table and a length >= 1 per row")
    if segments is None:  # callers that know their sharing (token trees) pass it
        segments = _segments(tables, lens, block_size)
    if target_wide_tasks:
        work = sum(
            (e - a) * -(-len(m) // max_rows_per_task) for _, a, e, m in segments if len(m) > 1
        )
        fitted = -(-work // target_wide_tasks) // 64 * 64 + 64
        chunk_tokens = max(64, min(chunk_tokens, fitted))
    while max_wide_tasks is not None:
        count = sum(
            -(-(e - a) // chunk_tokens) * -(-len(m) // max_rows_per_task)
            for _, a, e, m in segments
            if len(m) > 1
        )
        if count <= max_wide_tasks:
            break
        chunk_tokens *= 2
    wide: list[tuple[int, int, int, list[int]]] = []
    solo: list[tuple[int, int, int, list[int]]] = []
    # A row's own segment is split only in small batches: many rows are parallel enough.
    solo_chunk = chunk_tokens if len(lens) < 16 else 1 << 40
    for row, a, e, members in segments:
        step = chunk_tokens if len(members) > 1 else solo_chunk
        for c in range(a, e, step):
            for q in range(0, len(members), max_rows_per_task):
                part = members[q : q + max_rows_per_task]
                (wide if len(part) > 1 else solo).append((row, c, min(e, c + step), part))
    rows_: list[tuple[int, int, int, int, int, int]] = []
    blocks: list[int] = []
    part_rows: list[int] = []
    read = 0
    for row, a, e, members in wide + solo:
        first = a // block_size
        rows_.append((len(blocks), a - first * block_size, e - a, len(part_rows), len(members), a))
        blocks.extend(tables[row][first : -(-e // block_size)])
        part_rows.extend(members)
        read += e - a
    tasks = np.array(rows_, dtype=np.int32).reshape(-1, 6)
    pr = np.asarray(part_rows, dtype=np.int32)
    row_parts = np.argsort(pr, kind="stable").astype(np.int32)
    counts = np.bincount(pr, minlength=len(lens))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return TreePlan(
        tasks=tasks,
        num_wide=len(wide),
        blocks=np.asarray(blocks, dtype=np.int32),
        part_rows=pr,
        row_part_start=starts,
        row_parts=row_parts,
        tokens_read=read,
        tokens_plain=int(sum(lens)),
    )


def _visible(
    pos: torch.Tensor, rows: torch.Tensor, mask_start: torch.Tensor, mask_bits: torch.Tensor
) -> torch.Tensor:
    """[len(rows), len(pos)] bool: which absolute positions each row may attend to."""
    ms = mask_start[rows][:, None]
    shift = (pos[None, :] - ms).clamp(0, 63)
    bit = (mask_bits[rows][:, None] >> shift) & 1
    return (pos[None, :] < ms) | (bit != 0)


def tree_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: TreePlan,
    scale: float,
    mask_start: torch.Tensor | None = None,
    mask_bits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run `plan` with torch ops: each task's KV gathered once for all its rows, partials
    merged by log-sum-exp. q `[B, H, d]`, caches `[kv_heads, blocks, block_size, d]`."""
    batch, heads, dim = q.shape
    kv_heads, _, bs, _ = k_cache.shape
    group = heads // kv_heads
    parts = int(plan.part_rows.size)
    m = torch.full((parts, heads), float("-inf"))
    lsum = torch.zeros(parts, heads)
    acc = torch.zeros(parts, heads, dim)
    blocks = torch.from_numpy(plan.blocks.astype(np.int64))
    for b0, off, ntok, p0, nq, pos0 in plan.tasks.tolist():
        nb = -(-(off + ntok) // bs)
        idx = blocks[b0 : b0 + nb]
        k = k_cache[:, idx].reshape(kv_heads, nb * bs, dim)[:, off : off + ntok].float()
        v = v_cache[:, idx].reshape(kv_heads, nb * bs, dim)[:, off : off + ntok].float()
        rows = torch.from_numpy(plan.part_rows[p0 : p0 + nq].astype(np.int64))
        qr = q[rows].float().view(nq, kv_heads, group, dim)
        s = torch.einsum("nhgd,htd->nhgt", qr, k) * scale
        if mask_start is not None and mask_bits is not None:
            pos = torch.arange(pos0, pos0 + ntok)
            vis = _visible(pos, rows, mask_start.long(), mask_bits.long())
            s = s.masked_fill(~vis[:, None, None, :], float("-inf"))
        mx = s.amax(-1)
        safe = torch.where(mx == float("-inf"), torch.zeros_like(mx), mx)
        p = torch.exp(s - safe[..., None])
        sl = slice(p0, p0 + nq)
        m[sl] = mx.reshape(nq, heads)
        lsum[sl] = p.sum(-1).reshape(nq, heads)
        acc[sl] = torch.einsum("nhgt,htd->nhgd", p, v).reshape(nq, heads, dim)
    out = torch.empty(batch, heads, dim)
    for r in range(batch):
        slots = torch.from_numpy(
            plan.row_parts[plan.row_part_start[r] : plan.row_part_start[r + 1]].astype(np.int64)
        )
        mr = m[slots]
        top = mr.amax(0)
        w = torch.where(mr == float("-inf"), torch.zeros_like(mr), torch.exp(mr - top))
        out[r] = (w[..., None] * acc[slots]).sum(0) / (w * lsum[slots]).sum(0)[..., None]
    return out.to(q.dtype)


def dense_tree_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: Sequence[Sequence[int]],
    lens: Sequence[int],
    scale: float,
    mask_start: torch.Tensor | None = None,
    mask_bits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row's context gathered and attended on its own, in float32 (the oracle)."""
    batch, heads, dim = q.shape
    kv_heads, _, bs, _ = k_cache.shape
    out = torch.empty(batch, heads, dim)
    for r in range(batch):
        n = lens[r]
        idx = torch.tensor(list(tables[r][: -(-n // bs)]), dtype=torch.int64)
        k = k_cache[:, idx].reshape(kv_heads, -1, dim)[:, :n].float()
        v = v_cache[:, idx].reshape(kv_heads, -1, dim)[:, :n].float()
        qr = q[r].float().view(kv_heads, heads // kv_heads, dim)
        s = torch.einsum("hgd,htd->hgt", qr, k) * scale
        if mask_start is not None and mask_bits is not None:
            rows = torch.tensor([r])
            vis = _visible(torch.arange(n), rows, mask_start.long(), mask_bits.long())[0]
            s = s.masked_fill(~vis, float("-inf"))
        out[r] = torch.einsum("hgt,htd->hgd", s.softmax(-1), v).reshape(heads, dim)
    return out.to(q.dtype)

"""Batched attention for the verify chunks of a step (the CPU path).

A sequence that verifies k drafts runs a chunk of k + 1 query tokens after its cached
context. The generic prefill path attends every such chunk with its own SDPA call (a gather
and a boolean offset-causal mask per sequence and layer). Here the verify chunks of a step
are attended together, like the decode groups of `attention.py`: each sequence's blocks
are gathered once into a padded `[n, kv_heads, L, d]` buffer, chunks shorter than the longest
are padded with copies of their last query row (whose outputs are dropped), and an additive
bias carries the per-row causal lengths (and token trees' masks). Each query row is attended
exactly as a decode row (`attention.decode_rows_attention`: the query heads of one KV head
along SDPA's query axis, one thread), one SDPA call per sequence with its keys broadcast over
its rows (a view, no copy): a verify row's output is then bit-identical to the decode step it
replaces, which greedy identity with int4 weights needs (docs/speculative.md, "Exactness").

On CUDA the Triton paged-prefill kernel already attends every chunk of a step in one launch,
so this path is used only where that kernel is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from deploylab.engine.attention import Workspace, decode_rows_attention, one_cpu_thread
from deploylab.engine.attention import _gather as gather_rows
from deploylab.engine.spec_decode.tree_drafts import chunk_mask

# query start, query length, cached tokens, block table, token-tree parents (None: a chain)
VerifyItem = tuple[int, int, int, list[int], "list[int] | None"]


@dataclass
class VerifyBatch:
    """Index tensors for attending a step's verify chunks together (built once per step)."""

    num_seqs: int
    query_len: int  # padded query rows per sequence
    length: int  # padded keys per sequence (a multiple of the block size)
    query_index: torch.Tensor  # (n * Q,) token rows to read, padding repeats the last row
    valid: torch.Tensor  # (n * Q,) bool, rows that exist
    dest: torch.Tensor  # token rows the valid outputs go to, in order
    gather_index: torch.Tensor  # rows of the flat cache view, ordered (seq, kv_head, block)
    bias: torch.Tensor  # (n, Q, 1, 1, L) float, 0 = attend, -inf = masked
    workspace: Workspace | None = None
    # Token trees: per sequence, (Q, L) key positions that lay each row's path contiguous
    key_order: dict[int, torch.Tensor] = field(default_factory=dict)

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        """Attend the verify rows of q `[T, H, d]`, writing them into out `[T, H, d]`."""
        n, qn, length = self.num_seqs, self.query_len, self.length
        heads, d = q.shape[1], q.shape[2]
        kvh, bs = k_cache.shape[0], k_cache.shape[2]
        g = heads // kvh
        numel = self.gather_index.numel() * bs * d
        ws = self.workspace
        kb = gather_rows(k_cache, self.gather_index, ws.take(numel) if ws else None)
        vb = gather_rows(v_cache, self.gather_index, ws.take(numel, numel) if ws else None)
        kb, vb = kb.view(n, 1, kvh, length, d), vb.view(n, 1, kvh, length, d)
        qv = q.index_select(0, self.query_index).view(n, qn, kvh, g, d)
        bias = self.bias.to(q.dtype) if q.dtype != self.bias.dtype else self.bias
        o = torch.empty_like(qv)
        with one_cpu_thread():  # once for the loop, not per sequence
            for i in range(n):  # rows of one sequence share its keys: broadcast, not copied
                k_i, v_i = self._keys(i, kb, vb, qn)
                if q.device.type == "cpu":
                    o[i] = decode_rows_attention(qv[i], k_i, v_i, self.bias[i], scale)
                else:
                    o[i] = F.scaled_dot_product_attention(
                        qv[i], k_i, v_i, attn_mask=bias[i], scale=scale
                    )
        out.index_copy_(0, self.dest, o.view(n * qn, heads, d)[self.valid])

    def _keys(
        self, i: int, kb: torch.Tensor, vb: torch.Tensor, qn: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence i's keys and values per query row `[qn, kv_heads, L, d]`: its gathered
        blocks broadcast over the rows, or for a tree each row's path right after the
        context (`key_order`)."""
        order = self.key_order.get(i)
        if order is None:
            return kb[i].expand(qn, -1, -1, -1), vb[i].expand(qn, -1, -1, -1)
        kvh, length, d = kb.shape[2], kb.shape[3], kb.shape[4]
        k_i = kb[i, 0].index_select(1, order).view(kvh, qn, length, d).transpose(0, 1)
        v_i = vb[i, 0].index_select(1, order).view(kvh, qn, length, d).transpose(0, 1)
        return k_i.contiguous(), v_i.contiguous()


def build_verify_batch(
    items: list[VerifyItem],
    head_rows: torch.Tensor,
    block_size: int,
    device: torch.device,
    workspace: Workspace | None = None,
) -> VerifyBatch:
    """The index tensors for `items` (query start, query length, cached tokens, block table);
    `head_rows` are the KV heads' row offsets in the flat cache view."""
    n = len(items)
    qn = max(item[1] for item in items)
    nblocks = max(-(-(ctx + ql) // block_size) for _, ql, ctx, _, _ in items)
    length = nblocks * block_size
    query_index: list[int] = []
    valid: list[bool] = []
    dest: list[int] = []
    tables: list[list[int]] = []
    limits: list[int] = []  # keys each (seq, query row) may attend
    key_order: dict[int, torch.Tensor] = {}
    for i, (start, ql, ctx, table, tree) in enumerate(items):
        paths = tree_paths(tree) if tree is not None else None
        for j in range(qn):
            row = start + min(j, ql - 1)
            query_index.append(row)
            valid.append(j < ql)
            if j < ql:
                dest.append(row)
            if paths is None:
                limits.append(ctx + min(j, ql - 1) + 1)
            else:
                limits.append(ctx + len(paths[min(j, ql - 1)]))
        if paths is not None:
            key_order[i] = _path_order(paths, qn, ctx, length)
        used = table[:nblocks]
        tables.append(used + [0] * (nblocks - len(used)))
    table_t = torch.tensor(tables, dtype=torch.int64)
    gather = (table_t[:, None, :] + head_rows[None, :, None]).flatten()
    keys = torch.arange(length, dtype=torch.int64)
    lim = torch.tensor(limits, dtype=torch.int64).view(n, qn, 1)
    bias = torch.zeros((n, qn, length), dtype=torch.float32)
    bias.masked_fill_(keys.view(1, 1, length) >= lim, float("-inf"))
    bias = bias.view(n, qn, 1, 1, length)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t if device.type == "cpu" else t.to(device, non_blocking=True)

    return VerifyBatch(
        num_seqs=n,
        query_len=qn,
        length=length,
        query_index=dev(torch.tensor(query_index, dtype=torch.int64)),
        valid=dev(torch.tensor(valid, dtype=torch.bool)),
        dest=dev(torch.tensor(dest, dtype=torch.int64)),
        gather_index=dev(gather),
        bias=dev(bias),
        workspace=workspace,
        key_order={i: dev(o) for i, o in key_order.items()},
    )


def tree_paths(parents: list[int]) -> list[list[int]]:
    """Per verify-chunk row (the root, then each node), the chunk rows on its path from the
    root, itself last (its ancestors come first in topological order)."""
    return [row.nonzero().flatten().tolist() for row in chunk_mask(parents)]


def _path_order(paths: list[list[int]], qn: int, ctx: int, length: int) -> torch.Tensor:
    """(qn, length) key positions per query row: the context in place, then the row's path
    (chunk row r's key sits at ctx + r), the rest after it (masked by the bias). Padding
    rows repeat the last row."""
    order = torch.arange(length, dtype=torch.int64).repeat(qn, 1)
    for j in range(qn):
        path = paths[min(j, len(paths) - 1)]
        order[j, ctx : ctx + len(path)] = torch.tensor(path, dtype=torch.int64) + ctx
    return order.flatten()

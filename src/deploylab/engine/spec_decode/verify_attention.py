"""Batched attention for the verify chunks of a step (the CPU path).

A sequence that verifies k drafts runs a chunk of k + 1 query tokens after its cached
context. The generic prefill path attends every such chunk with its own SDPA call (a gather
and a boolean offset-causal mask per sequence and layer). Here the verify chunks of a step
are attended together, one SDPA call per layer, like the decode groups of `attention.py`:
each sequence's blocks are gathered into a padded `[n, kv_heads, L, d]` buffer, the query
heads of one KV head are laid along SDPA's query axis as `(group, query)` (no GQA repeat),
chunks shorter than the longest are padded with copies of their last query row (whose
outputs are dropped), and an additive bias carries the per-row causal lengths.

On CUDA the Triton paged-prefill kernel already attends every chunk of a step in one launch,
so this path is used only where that kernel is absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deploylab.engine.attention import Workspace
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
    bias: torch.Tensor  # (n, 1, groups * Q, L) float, 0 = attend, -inf = masked
    workspace: Workspace | None = None

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
        qv = q.index_select(0, self.query_index).view(n, qn, kvh, g, d)
        qv = qv.permute(0, 2, 3, 1, 4).reshape(n, kvh, g * qn, d)
        o = F.scaled_dot_product_attention(
            qv,
            kb.view(n, kvh, length, d),
            vb.view(n, kvh, length, d),
            attn_mask=self.bias.to(q.dtype) if q.dtype != self.bias.dtype else self.bias,
            scale=scale,
        )
        o = o.view(n, kvh, g, qn, d).permute(0, 3, 1, 2, 4).reshape(n * qn, heads, d)
        out.index_copy_(0, self.dest, o[self.valid])


def build_verify_batch(
    items: list[VerifyItem],
    head_rows: torch.Tensor,
    groups: int,
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
    for start, ql, ctx, table, _ in items:
        for j in range(qn):
            row = start + min(j, ql - 1)
            query_index.append(row)
            valid.append(j < ql)
            if j < ql:
                dest.append(row)
            limits.append(ctx + min(j, ql - 1) + 1)
        used = table[:nblocks]
        tables.append(used + [0] * (nblocks - len(used)))
    table_t = torch.tensor(tables, dtype=torch.int64)
    gather = (table_t[:, None, :] + head_rows[None, :, None]).flatten()
    keys = torch.arange(length, dtype=torch.int64)
    lim = torch.tensor(limits, dtype=torch.int64).view(n, 1, 1, qn, 1)
    bias = torch.zeros((n, 1, 1, qn, length), dtype=torch.float32)
    bias.masked_fill_(keys.view(1, 1, 1, 1, length) >= lim, float("-inf"))
    for i, (_, ql, ctx, _, tree) in enumerate(items):
        if tree is not None:  # a token tree: each node sees the context and its own path
            mask = chunk_mask(tree)
            region = bias[i, 0, 0, :ql, ctx : ctx + ql]
            region.copy_(torch.zeros_like(region).masked_fill_(~mask, float("-inf")))
    bias = bias.expand(n, 1, groups, qn, length).reshape(n, 1, groups * qn, length)

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
    )

"""Token-tree verify chunks through the tree-attention (DeFT) kernel (`triton_tree.py`).

A token tree of n nodes after p0 cached tokens is n query rows that share all of the
sequence's context: every row gets the sequence's block table and the length p0 + n, and a
*tail mask* starting at p0 whose bits are the row's ancestors in the chunk (itself included).
`build_tree_plan` then finds one shared segment per tree, so the context's KV is read once
for all the tree's nodes, in chunks spread over the GPU, and the partial softmaxes are
merged by log-sum-exp. The masked SDPA path (`verify_attention.py`) instead gathers each
sequence's whole context into a padded buffer first. Used wherever the engine has a
`TreeDecoder` (CUDA by default); the CPU runs the same plan with torch ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from deploylab.engine.spec_decode.verify_attention import build_verify_batch
from deploylab.engine.tree_attention import TreePlan, build_tree_plan, tree_decode_reference

MAX_TREE_ROWS = 64  # a tail mask holds 64 positions


@dataclass
class TreeVerify:
    """The step's token-tree chunks as masked tree-attention rows (built once per step)."""

    rows: torch.Tensor  # (R,) int64 token rows of the chunks, on the device
    plan: TreePlan
    mask_start: torch.Tensor  # (R,) int32
    mask_bits: torch.Tensor  # (R,) int64
    device_plan: Any = None  # `triton_tree.DeviceTreePlan` on CUDA

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        """Attend the chunks' rows of q `[T, H, d]` into out `[T, H, d]`."""
        qr = q.index_select(0, self.rows)
        if self.device_plan is not None:
            from deploylab.engine.triton_tree import tree_decode

            o = tree_decode(
                qr, k_cache, v_cache, self.device_plan, scale, self.mask_start, self.mask_bits
            )
        else:
            o = tree_decode_reference(
                qr, k_cache, v_cache, self.plan, scale, self.mask_start, self.mask_bits
            )
        out.index_copy_(0, self.rows, o)


def ancestor_bits(parents: list[int]) -> list[int]:
    """Per chunk row (root first): bit c set iff chunk row c is the row itself or one of its
    ancestors (`chunk_mask` as integers; parents come before children). Bit 63 is the int64
    sign bit, as the kernel reads it."""
    bits = [1]
    for i, parent in enumerate(parents):
        bits.append(bits[parent + 1] | (1 << (i + 1)))
    return [b - (1 << 64) if b >= 1 << 63 else b for b in bits]


def fits(query_len: int) -> bool:
    """Whether a tree chunk of `query_len` rows fits a tail mask."""
    return query_len <= MAX_TREE_ROWS


def build_tree_verify(
    items: list[tuple[int, int, int, list[int], list[int]]],
    block_size: int,
    device: torch.device,
    rows_per_task: int,
    target_wide_tasks: int | None,
) -> TreeVerify:
    """The tree-attention rows of token-tree chunks given as (query start, query length,
    cached tokens, block table, parents)."""
    rows: list[int] = []
    tables: list[list[int]] = []
    lens: list[int] = []
    starts: list[int] = []
    bits: list[int] = []
    segments: list[tuple[int, int, int, list[int]]] = []
    for start, ql, p0, table, parents in items:
        # The tree's rows share its whole context: one segment, no grouping to search for.
        segments.append((len(rows), 0, p0 + ql, list(range(len(rows), len(rows) + ql))))
        row_bits = ancestor_bits(parents)
        for j in range(ql):
            rows.append(start + j)
            tables.append(table)
            lens.append(p0 + ql)
            starts.append(p0)
            bits.append(row_bits[j])
    plan = build_tree_plan(
        tables,
        lens,
        block_size,
        max_rows_per_task=rows_per_task,
        max_wide_tasks=256,
        target_wide_tasks=target_wide_tasks,
        segments=segments,
    )
    idx = torch.tensor(rows, dtype=torch.int64)
    ms = torch.tensor(starts, dtype=torch.int32)
    mb = torch.tensor(bits, dtype=torch.int64)
    if device.type != "cuda":
        return TreeVerify(idx, plan, ms, mb)
    from deploylab.engine.triton_tree import to_device

    return TreeVerify(
        idx.to(device, non_blocking=True),
        plan,
        ms.to(device, non_blocking=True),
        mb.to(device, non_blocking=True),
        device_plan=to_device(plan, device),
    )


def verify_hook(
    items: list[Any],
    tree: Any,
    head_rows: torch.Tensor,
    block_size: int,
    device: torch.device,
    workspace: Any = None,
) -> Callable[..., None]:
    """`AttentionMetadata.verify` for a step's verify items: token trees through the tree
    kernel when the engine has a `TreeDecoder` (`tree`), the rest (and every item without
    one) through the batched masked-SDPA path."""
    trees: list[Any] = []
    rest: list[Any] = []
    for item in items:
        kernel = tree is not None and item[4] is not None and fits(item[1])
        (trees if kernel else rest).append(item)
    hooks: list[Callable[..., None]] = []
    if trees:
        hooks.append(
            build_tree_verify(trees, block_size, device, tree.rows_per_task, tree.target_wide_tasks)
        )
        tree.verify_steps += 1
    if rest:
        hooks.append(build_verify_batch(rest, head_rows, block_size, device, workspace))
    if len(hooks) == 1:
        return hooks[0]

    def both(*args: Any) -> None:
        for hook in hooks:
            hook(*args)

    return both

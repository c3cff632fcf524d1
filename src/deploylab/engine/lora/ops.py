"""`LoraBatch`: one step's per-row adapter corrections, called by the model's projections.

The base projection runs once for the whole batch; then, per adapter present, the rows of
that adapter get `y += (x @ A.T) @ B.T` (shrink, then expand; B carries the scaling). On the
CPU this is a grouped torch path (one small GEMM pair per adapter); on CUDA the Triton SGMV
(prefill segments) and BGMV (one row per decode) kernels of `triton_ops` run instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deploylab.engine.lora.slots import Key, LoraSlots


@dataclass
class SlotRows:
    """The step's rows of one slot: `[start, stop)` of the step's rows, or of the permuted
    rows (`RowGroups.perm`) when some adapter's rows are not contiguous."""

    slot: int
    start: int
    stop: int


@dataclass
class RowGroups:
    """A step's adapter rows grouped by slot; `perm` (rows sorted by slot) is set when the
    groups are not contiguous in the step's own order (decode rows, sorted by length)."""

    groups: list[SlotRows]
    perm: torch.Tensor | None = None


class LoraBatch:
    """Callable passed to the model in `AttentionMetadata.lora`: `(x, y, modules) -> y`
    adds each row's adapter correction to `y`, the concatenated outputs of `modules`."""

    def __init__(
        self,
        slots: LoraSlots,
        keys: dict[int, Key],
        groups: RowGroups,
        kernels: object | None = None,
    ) -> None:
        self.slots = slots
        self.keys = keys
        self.groups = groups
        self.kernels = kernels  # a `triton_ops.LoraKernels` step plan on CUDA, else None

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | Callable[[], torch.Tensor],
        modules: Sequence[nn.Linear],
    ) -> torch.Tensor:
        """`y` (the base outputs, or a thunk computing them) plus each row's correction."""
        keys = [self.keys[id(m)] for m in modules]
        if self.kernels is not None:  # one call for the group (fused q/k/v, gate/up)
            a = [self.slots.a[k] for k in keys]
            b = [self.slots.b[k] for k in keys]
            widths = [m.out_features for m in modules]
            return self.kernels.apply(x, y, a, b, widths)  # type: ignore[attr-defined,no-any-return]
        y = y() if callable(y) else y
        off = 0
        for module, key in zip(modules, keys, strict=True):
            n = module.out_features
            self._grouped(x, y[..., off : off + n] if len(modules) > 1 else y, key)
            off += n
        return y

    def _grouped(self, x: torch.Tensor, y: torch.Tensor, key: Key) -> None:
        """CPU path: one shrink/expand GEMM pair per adapter, at the adapter's own rank;
        scattered rows are gathered once (sorted by slot) and added back with one index_add."""
        slots = self.slots
        a_all, b_all = slots.a[key], slots.b[key]
        perm = self.groups.perm
        xs, out = x, y
        if perm is not None:
            xs = x.index_select(0, perm)
            out = torch.zeros(perm.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
        for g in self.groups.groups:
            if key not in slots.targets[g.slot]:
                continue
            r = slots.rank[g.slot]
            a, b = a_all[g.slot, :r], b_all[g.slot, :, :r]
            out[g.start : g.stop].add_((xs[g.start : g.stop] @ a.T) @ b.T)
        if perm is not None:
            y.index_add_(0, perm, out)


def slot_order(slots: list[int]) -> list[int]:
    """The rows sorted by slot (stable): BGMV programs of several rows then mostly read one
    adapter (`triton_bgmv`)."""
    return sorted(range(len(slots)), key=slots.__getitem__)


def slots_and_order(row_slots: list[int]) -> list[int]:
    """A decode graph's LoRA input: each row's slot (-1 = base model), then `slot_order` of
    them. The order must be a permutation of the rows even for base-only rows: the kernels
    load each program's rows through it before they look at the slots."""
    return row_slots + slot_order(row_slots)


def group_rows(row_slots: list[int], device: torch.device) -> RowGroups:
    """Group a step's rows by slot (-1 = base model, skipped)."""
    rows: dict[int, list[int]] = {}
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            rows.setdefault(slot, []).append(row)
    if all(idx[-1] - idx[0] + 1 == len(idx) for idx in rows.values()):
        return RowGroups([SlotRows(s, idx[0], idx[-1] + 1) for s, idx in rows.items()])
    groups: list[SlotRows] = []
    order: list[int] = []
    for slot, idx in rows.items():
        groups.append(SlotRows(slot, len(order), len(order) + len(idx)))
        order.extend(idx)
    return RowGroups(groups, torch.tensor(order, device=device))

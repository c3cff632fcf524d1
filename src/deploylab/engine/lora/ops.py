"""`LoraBatch`: one step's per-row adapter corrections, called by the model's projections.

The base projection runs once for the whole batch; then, per adapter present, the rows of
that adapter get `y += (x @ A.T) @ B.T` (shrink, then expand; B carries the scaling). On the
CPU this is a grouped torch path (one small GEMM pair per adapter); on CUDA the Triton SGMV
(prefill segments) and BGMV (one row per decode) kernels of `triton_ops` run instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deploylab.engine.lora.slots import Key, LoraSlots


@dataclass
class SlotRows:
    """The step's rows of one slot: a contiguous range or an index tensor."""

    slot: int
    start: int
    stop: int
    index: torch.Tensor | None = None  # set when the rows are not contiguous


class LoraBatch:
    """Callable passed to the model in `AttentionMetadata.lora`: `(x, y, modules) -> y`
    adds each row's adapter correction to `y`, the concatenated outputs of `modules`."""

    def __init__(
        self,
        slots: LoraSlots,
        keys: dict[int, Key],
        groups: list[SlotRows],
        kernels: object | None = None,
    ) -> None:
        self.slots = slots
        self.keys = keys
        self.groups = groups
        self.kernels = kernels  # a `triton_ops.LoraKernels` step plan on CUDA, else None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, modules: Sequence[nn.Linear]
    ) -> torch.Tensor:
        keys = [self.keys[id(m)] for m in modules]
        if self.kernels is not None:  # one call for the group (fused q/k/v, gate/up)
            a = [self.slots.a[k] for k in keys]
            b = [self.slots.b[k] for k in keys]
            self.kernels.apply(x, y, a, b, [m.out_features for m in modules])  # type: ignore[attr-defined]
            return y
        off = 0
        for module, key in zip(modules, keys, strict=True):
            n = module.out_features
            self._grouped(x, y[..., off : off + n] if len(modules) > 1 else y, key)
            off += n
        return y

    def _grouped(self, x: torch.Tensor, y: torch.Tensor, key: Key) -> None:
        """CPU path: one shrink/expand GEMM pair per adapter, at the adapter's own rank."""
        slots = self.slots
        a_all, b_all = slots.a[key], slots.b[key]
        for g in self.groups:
            if key not in slots.targets[g.slot]:
                continue
            r = slots.rank[g.slot]
            a, b = a_all[g.slot, :r], b_all[g.slot, :, :r]
            if g.index is None:
                rows = y[g.start : g.stop]
                rows.add_((x[g.start : g.stop] @ a.T) @ b.T)
            else:
                y.index_add_(0, g.index, (x.index_select(0, g.index) @ a.T) @ b.T)


def group_rows(row_slots: list[int], device: torch.device) -> list[SlotRows]:
    """Group a step's rows by slot (-1 = base model, skipped)."""
    rows: dict[int, list[int]] = {}
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            rows.setdefault(slot, []).append(row)
    groups = []
    for slot, idx in rows.items():
        if idx[-1] - idx[0] + 1 == len(idx):
            groups.append(SlotRows(slot, idx[0], idx[-1] + 1))
        else:
            groups.append(SlotRows(slot, idx[0], idx[-1] + 1, torch.tensor(idx, device=device)))
    return groups

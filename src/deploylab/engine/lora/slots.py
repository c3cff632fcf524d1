"""Device slots for resident adapters: per target projection one stacked A `[S, R, in]` and
B `[S, out, R]` buffer (S = --max-loras, R = --max-lora-rank), filled by copy on load."""

from __future__ import annotations

import torch

from deploylab.engine.lora.adapter import TARGET_MODULES, LoraAdapter, module_shapes
from deploylab.engine.models.config import LlamaConfig

Key = tuple[int, str]  # (layer index, projection name)


class LoraSlots:
    """Fixed adapter slots on the device; a slot's unused rank columns and modules stay zero,
    so kernels may run every slot at full rank R and get exact results."""

    def __init__(
        self,
        config: LlamaConfig,
        num_slots: int,
        max_rank: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.num_slots = num_slots
        # Kernels want a power-of-two width of at least 16 (the extra columns stay zero).
        self.max_rank = max(16, 1 << (max_rank - 1).bit_length())
        max_rank = self.max_rank
        self.device = device
        self.dtype = dtype
        shapes = module_shapes(config)
        self.a: dict[Key, torch.Tensor] = {}
        self.b: dict[Key, torch.Tensor] = {}
        for layer in range(config.num_hidden_layers):
            for module in TARGET_MODULES:
                fan_in, fan_out = shapes[module]
                key = (layer, module)
                self.a[key] = torch.zeros(num_slots, max_rank, fan_in, dtype=dtype, device=device)
                self.b[key] = torch.zeros(num_slots, fan_out, max_rank, dtype=dtype, device=device)
        self.rank = [0] * num_slots
        self.targets: list[frozenset[Key]] = [frozenset()] * num_slots
        self.adapter_id = [0] * num_slots  # 0: empty

    def write(self, slot: int, adapter_id: int, adapter: LoraAdapter) -> None:
        """Copy `adapter` into `slot` (zeroing what the previous occupant left)."""
        for key in self.targets[slot]:
            self.a[key][slot].zero_()
            self.b[key][slot].zero_()
        nb = self.device.type == "cuda"
        for key, (a, b) in adapter.weights.items():
            r = a.shape[0]
            self.a[key][slot, :r].copy_(a, non_blocking=nb)
            self.b[key][slot, :, :r].copy_(b, non_blocking=nb)
        self.rank[slot] = adapter.rank
        self.targets[slot] = frozenset(adapter.weights)
        self.adapter_id[slot] = adapter_id

    def clear(self, slot: int) -> None:
        """Empty `slot`."""
        for key in self.targets[slot]:
            self.a[key][slot].zero_()
            self.b[key][slot].zero_()
        self.rank[slot] = 0
        self.targets[slot] = frozenset()
        self.adapter_id[slot] = 0

    def num_bytes(self) -> int:
        """Device bytes held by the slot buffers."""
        return sum(t.nbytes for t in self.a.values()) + sum(t.nbytes for t in self.b.values())

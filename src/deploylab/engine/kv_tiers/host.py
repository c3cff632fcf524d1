"""`HostPool`: the host tier, a fixed pool of block-sized slots (pinned on CUDA), LRU."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import torch


@dataclass
class HostEntry:
    """One offloaded block: its pool slot and the token ids it holds (checked on a hit)."""

    slot: int
    tokens: tuple[int, ...]


class HostPool:
    """`capacity` slots, each one KV block of every layer `[layers, 2, kv_heads, block, dim]`,
    indexed by the block manager's chained block hash, least recently used evicted first.
    `data[slot]`, or with `layer_major` `data[layer, slot]` (one layer of consecutive slots
    is then one contiguous copy, for copies layer by layer)."""

    def __init__(
        self,
        capacity: int,
        block_shape: tuple[int, ...],
        dtype: torch.dtype,
        pin: bool,
        layer_major: bool = False,
    ):
        self.capacity = capacity
        self.layer_major = layer_major
        layers, *rest = block_shape
        shape = (layers, capacity, *rest) if layer_major else (capacity, *block_shape)
        self.data = torch.empty(shape, dtype=dtype, pin_memory=pin)
        self.entries: OrderedDict[int, HostEntry] = OrderedDict()
        self._free = deque(range(capacity))  # FIFO: slots freed together stay together
        self.pinned: set[int] = set()  # hashes a scheduled load still needs this step

    def block(self, slot: int) -> torch.Tensor:
        """The block in `slot`, `[layers, 2, kv_heads, block, dim]` (a view)."""
        return self.data[:, slot] if self.layer_major else self.data[slot]

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, h: int, tokens: tuple[int, ...]) -> HostEntry | None:
        """The entry for hash `h` holding `tokens` (marked most recently used), else None."""
        entry = self.entries.get(h)
        if entry is None or entry.tokens != tokens:
            return None
        self.entries.move_to_end(h)
        return entry

    def victim(self, fresh: set[int]) -> tuple[int, HostEntry] | None:
        """The least recently used entry neither pinned by a pending load nor `fresh`
        (None: there is none)."""
        for h, entry in self.entries.items():
            if h not in self.pinned and h not in fresh:
                return h, entry
        return None

    def remove(self, h: int) -> None:
        """Drop hash `h`, freeing its slot."""
        entry = self.entries.pop(h)
        self._free.append(entry.slot)

    def add(self, h: int, tokens: tuple[int, ...]) -> int | None:
        """Reserve a slot for hash `h` (the caller fills it); None when full."""
        if not self._free:
            return None
        slot = self._free.popleft()
        self.entries[h] = HostEntry(slot, tokens)
        return slot

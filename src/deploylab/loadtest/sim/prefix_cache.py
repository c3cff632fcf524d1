"""An LRU cache of prompt blocks: how much of a new prompt's prefix is already computed."""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    """Block hashes in least-recently-used order, bounded by a capacity in blocks."""

    def __init__(self, capacity_blocks: int, block_size: int, enabled: bool = True) -> None:
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self.enabled = enabled
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.queries_tokens = 0
        self.hits_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, hashes: list[int], prompt_tokens: int) -> int:
        """Cached prompt tokens for these block hashes (leading hits only; at most n - 1)."""
        self.queries_tokens += prompt_tokens
        if not self.enabled:
            return 0
        blocks = self._blocks
        hits = 0
        for h in hashes:
            if h not in blocks:
                break
            blocks.move_to_end(h)
            hits += 1
        # Like real engines, the last prompt token is always computed, to produce logits.
        cached = min(hits * self.block_size, prompt_tokens - 1) if hits else 0
        self.hits_tokens += cached
        return cached

    def insert(self, hashes: list[int]) -> None:
        """Record a computed prompt's blocks, evicting the least recently used beyond capacity."""
        if not self.enabled:
            return
        blocks = self._blocks
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)

    def reset(self) -> None:
        """Forget every cached block."""
        self._blocks.clear()

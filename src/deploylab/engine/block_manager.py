"""`BlockManager`: the paged KV cache's bookkeeping, with automatic prefix caching.

Blocks hold `block_size` tokens. Each block has a reference count (how many block tables
list it). A full block whose keys/values are computed is registered in the prefix cache under
a chained hash (hash of the parent block's hash and its own token ids), so a later prompt that
starts with the same tokens reuses it instead of recomputing.

A block with refcount 0 sits in one of two pools: `free` (holds nothing worth keeping) or
`evictable` (holds a cached prefix block, LRU ordered). New blocks come from `free` first;
cached blocks are evicted, least recently released first, only when `free` is empty.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

from deploylab.engine.sequence import Sequence

if TYPE_CHECKING:
    from deploylab.engine.kv_tiers import KVTiers


class BlockManager:
    """Allocates, shares, caches and frees KV blocks for sequences."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[int, int] = {}  # block hash -> block id
        # (src, dst) block copies the model runner must do before the next forward pass.
        self.pending_copies: list[tuple[int, int]] = []
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which were found cached
        self.tiers: KVTiers | None = None  # KV tiers: evicted blocks written back (off: None)

    # ---- pools -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free plus evictable cached ones)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache (in use or evictable)."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some sequence."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            if self.tiers is not None:
                self.tiers.on_evict(block, self.block_hash[block], self.block_tokens[block])
            self._uncache(block)
        self.ref_counts[block] = 1
        return block

    def _uncache(self, block: int) -> None:
        if self.tiers is not None:
            self.tiers.on_uncache(block)
        h = self.block_hash[block]
        if h is not None and self._cached.get(h) == block:
            del self._cached[h]
        self.block_hash[block] = None
        self.block_tokens[block] = None

    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self._evictable[block]
        self.ref_counts[block] += 1

    def _release(self, block: int) -> None:
        count = self.ref_counts[block] - 1
        if count < 0:
            raise RuntimeError(f"block {block} freed more often than allocated")
        self.ref_counts[block] = count
        if count == 0:
            if self.block_hash[block] is not None:
                self._evictable[block] = None
            else:
                self._free.append(block)

    # ---- hashing -----------------------------------------------------------------------
    def _block_token_ids(self, seq: Sequence, index: int) -> tuple[int, ...]:
        if index < len(seq.block_tokens):  # kept beside its hash (a 16k prompt: 1,024 blocks)
            return seq.block_tokens[index]
        start = index * self.block_size
        return tuple(seq.token_ids[start : start + self.block_size])

    def _ensure_hashes(self, seq: Sequence, num_blocks: int) -> None:
        """Extend `seq.block_hashes` (and `block_tokens`) to its first `num_blocks` (full)
        blocks."""
        hashes, kept, bs, ids = seq.block_hashes, seq.block_tokens, self.block_size, seq.token_ids
        for i in range(len(hashes), num_blocks):
            # The first block's hash is salted with the LoRA adapter (none for the base model).
            parent = hashes[i - 1] if i else (("lora", seq.lora_id) if seq.lora_id else None)
            tokens = tuple(ids[i * bs : (i + 1) * bs])
            hashes.append(hash((parent, tokens)))
            kept.append(tokens)

    # ---- sequence API ------------------------------------------------------------------
    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of `seq` (at least one token is left to compute,
        so the step that finishes the prompt has logits to sample from)."""
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return []  # prompt logprobs need every prompt position computed
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self._ensure_hashes(seq, max_blocks)
        hits: list[int] = []
        for i in range(max_blocks):
            block = self._cached.get(seq.block_hashes[i])
            if block is None or self.block_tokens[block] != self._block_token_ids(seq, i):
                break
            hits.append(block)
        return hits

    def lookup_offloaded(self, seq: Sequence, first: int) -> int:
        """Blocks after the `first` device-cached ones that a KV tier holds (0 without)."""
        if self.tiers is None or not self.enable_prefix_caching:
            return 0
        if seq.params.prompt_logprobs is not None:
            return 0
        end = (seq.num_tokens - 1) // self.block_size
        return self.tiers.lookup(seq.block_hashes, lambda i: self._block_token_ids(seq, i),
                                 first, end)  # fmt: skip

    def load_offloaded(self, seq: Sequence, first: int, count: int) -> None:
        """After `allocate`: have the tier fill table blocks `first..first+count` (its hits;
        the lookup is counted even when there were none)."""
        if self.tiers is not None and self.enable_prefix_caching:
            if seq.params.prompt_logprobs is None:
                queried = seq.num_tokens - first * self.block_size
                self.tiers.load(seq.block_table[first : first + count], queried)

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        """Count a prefix-cache lookup for the hit-rate metrics."""
        self.prefix_queries += num_query_tokens
        self.prefix_hits += num_hit_tokens

    def allocate(
        self,
        seq: Sequence,
        num_new_tokens: int,
        cached_blocks: Seq[int] = (),
        reserve: int = 0,
    ) -> bool:
        """Make `seq.block_table` cover its computed tokens, `cached_blocks` (a prefix hit
        appended first) and `num_new_tokens` more. All or nothing: False when short of blocks
        or when fewer than `reserve` blocks would stay free.
        """
        bs = self.block_size
        table = seq.block_table
        start = seq.num_computed_tokens + len(cached_blocks) * bs
        total = start + num_new_tokens
        need = -(-total // bs) - len(table) - len(cached_blocks)
        # Copy-on-write: the block the new tokens start in is shared (after a fork).
        first = start // bs
        cow = num_new_tokens > 0 and first < len(table) and self.ref_counts[table[first]] > 1
        if need <= 0 and not cow and not cached_blocks and not reserve:
            return True  # most decode steps: the tokens fit in the blocks already held
        revived = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        if max(need, 0) + revived + int(cow) + reserve > self.num_free_blocks:
            return False
        for block in cached_blocks:
            self._ref(block)
            table.append(block)
        if cow:
            src = table[first]
            dst = self._take()
            self._release(src)
            table[first] = dst
            self.pending_copies.append((src, dst))
        for _ in range(need):
            table.append(self._take())
        return True

    def free(self, seq: Sequence) -> None:
        """Release all of `seq`'s blocks (tail first, so its prefix stays cached longest)."""
        for block in reversed(seq.block_table):
            self._release(block)
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def trim(self, seq: Sequence) -> None:
        """Release the tail blocks past `seq`'s computed tokens (rejected speculative drafts;
        never hashed, as only computed full blocks are offered to the prefix cache)."""
        keep = -(-seq.num_computed_tokens // self.block_size)
        while len(seq.block_table) > keep:
            self._release(seq.block_table.pop())

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let `child` share all of `parent`'s blocks (written blocks are copied on write)."""
        if child.block_table:
            raise RuntimeError("fork target already holds blocks")
        for block in parent.block_table:
            self._ref(block)
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
        child.num_hashed_blocks = parent.num_hashed_blocks

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register `seq`'s full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if num_full <= seq.num_hashed_blocks:
            return
        self._ensure_hashes(seq, num_full)
        for i in range(seq.num_hashed_blocks, num_full):
            block = seq.block_table[i]
            h = seq.block_hashes[i]
            if self.block_hash[block] is None and h not in self._cached:
                self._cached[h] = block
                self.block_hash[block] = h
                tokens = self.block_tokens[block] = self._block_token_ids(seq, i)
                if self.tiers is not None:
                    self.tiers.on_cached(block, h, tokens)
        seq.num_hashed_blocks = num_full

    def evict_cached(self, max_blocks: int | None = None) -> int:
        """Drop up to `max_blocks` unreferenced cached blocks (all when None), LRU first."""
        count = 0
        while self._evictable and (max_blocks is None or count < max_blocks):
            block, _ = self._evictable.popitem(last=False)
            self._uncache(block)
            self._free.append(block)
            count += 1
        return count

    def check_invariants(self) -> None:
        """Raise AssertionError if the pools, refcounts and hash index disagree."""
        free, evictable = list(self._free), list(self._evictable)
        assert len(set(free)) == len(free), "duplicate block in free list"
        assert not set(free) & set(evictable), "block both free and evictable"
        for b in free:
            assert self.ref_counts[b] == 0 and self.block_hash[b] is None
        for b in evictable:
            assert self.ref_counts[b] == 0 and self.block_hash[b] is not None
        in_use = [b for b in range(self.num_blocks) if self.ref_counts[b] > 0]
        assert len(free) + len(evictable) + len(in_use) == self.num_blocks, "leaked block"
        for h, b in self._cached.items():
            assert self.block_hash[b] == h, "hash index points at a block with another hash"
        hashed = [b for b in range(self.num_blocks) if self.block_hash[b] is not None]
        assert len(hashed) == len(self._cached), "hashed block missing from the index"


def extend_with_tables(packed: array, tables: Iterable[list[int]], width: int) -> None:
    """Append each block table to `packed` as one row of `width` entries: cut, or padded with
    block 0 (rows only read the entries their context length reaches)."""
    for table in tables:  # fromlist: about twice as fast as extend for lists
        if len(table) > width:
            packed.fromlist(table[:width])
        else:
            packed.fromlist(table)
            if len(table) < width:
                packed.fromlist([0] * (width - len(table)))

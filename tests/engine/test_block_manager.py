"""BlockManager: refcounts, prefix-cache hits, LRU eviction, and a hypothesis state machine
that checks no block ever leaks or is freed twice."""

from __future__ import annotations

from array import array

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from deploylab.engine.block_manager import BlockManager, extend_with_tables
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.sequence import Sequence

BS = 4


def make_seq(tokens: list[int], rid: str = "r") -> Sequence:
    return Sequence(rid, tokens, SamplingParams(), 0)


def admit(bm: BlockManager, seq: Sequence) -> bool:
    """Prefix lookup + allocation for the whole remaining prompt, then mark it computed."""
    cached = bm.lookup_prefix(seq)
    n = seq.num_tokens - len(cached) * BS
    if not bm.allocate(seq, n, cached):
        return False
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    return True


def test_allocate_and_free_return_every_block() -> None:
    bm = BlockManager(8, BS)
    seq = make_seq(list(range(10)))
    assert admit(bm, seq)
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 5
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []
    bm.check_invariants()


def test_prefix_hit_shares_blocks_and_counts() -> None:
    bm = BlockManager(16, BS)
    a = make_seq(list(range(13)), "a")
    assert admit(bm, a)
    b = make_seq(list(range(9)) + [99, 98], "b")
    hits = bm.lookup_prefix(b)
    assert hits == a.block_table[:2]  # 8 shared tokens; the third block differs
    assert bm.allocate(b, b.num_tokens - 8, hits)
    assert all(bm.ref_counts[x] == 2 for x in hits)
    bm.record_lookup(b.num_tokens, len(hits) * BS)
    assert (bm.prefix_queries, bm.prefix_hits) == (11, 8)
    bm.check_invariants()


def test_whole_prompt_hit_leaves_one_token_to_compute() -> None:
    bm = BlockManager(16, BS)
    a = make_seq(list(range(8)), "a")
    assert admit(bm, a)
    b = make_seq(list(range(8)), "b")
    assert len(bm.lookup_prefix(b)) == 1  # not 2: the last token must run to give logits


def test_cached_blocks_survive_until_free_blocks_run_out() -> None:
    bm = BlockManager(4, BS)
    a = make_seq(list(range(8)), "a")
    assert admit(bm, a)
    bm.free(a)  # both blocks stay cached (evictable), two blocks are plainly free
    assert bm.num_cached_blocks == 2 and bm.num_free_blocks == 4
    b = make_seq([50, 51, 52, 53, 54, 55, 56], "b")
    assert admit(bm, b)  # uses the two plain free blocks, no eviction
    assert bm.num_cached_blocks >= 2
    assert len(bm.lookup_prefix(make_seq(list(range(9))))) == 2
    bm.free(b)
    c = make_seq([70] * 16, "c")  # needs all 4 blocks: evicts the cached ones
    assert admit(bm, c)
    assert bm.lookup_prefix(make_seq(list(range(9)))) == []
    bm.check_invariants()


def test_lru_evicts_least_recently_released_first() -> None:
    bm = BlockManager(4, BS)
    old = make_seq([1, 2, 3, 4, 5], "old")
    new = make_seq([9, 8, 7, 6, 5], "new")
    assert admit(bm, old) and admit(bm, new)
    bm.free(old)
    bm.free(new)
    d = make_seq([40, 41, 42, 43], "d")
    assert bm.allocate(d, 4) and bm.allocate(make_seq([0] * 4, "e"), 4)
    # Two plain free blocks went first; the next allocation evicts old's cached block.
    assert bm.allocate(make_seq([0] * 4, "f"), 4)
    assert bm.lookup_prefix(make_seq([1, 2, 3, 4, 5])) == []
    assert len(bm.lookup_prefix(make_seq([9, 8, 7, 6, 5]))) == 1


def test_kept_block_tokens_are_the_hashed_blocks_tokens() -> None:
    """The token ids kept beside each block hash (lookups reuse them) are that block's, for
    the sequence and for a forked sample that goes on with other tokens."""
    bm = BlockManager(16, BS)
    seq = make_seq(list(range(100, 111)))
    assert admit(bm, seq)
    assert seq.block_tokens == [(100, 101, 102, 103), (104, 105, 106, 107)]
    child = seq.fork(1)
    bm.fork(seq, child)
    child.token_ids.append(7)
    child.num_computed_tokens = child.num_tokens
    bm.cache_full_blocks(child)
    assert child.block_tokens[-1] == (108, 109, 110, 7)
    assert len(seq.block_tokens) == 2
    for s in (seq, child):
        for i, tokens in enumerate(s.block_tokens):
            assert tokens == tuple(s.token_ids[i * BS : (i + 1) * BS])


def test_allocate_is_all_or_nothing() -> None:
    bm = BlockManager(2, BS)
    seq = make_seq(list(range(12)))
    assert not bm.allocate(seq, 12)
    assert seq.block_table == [] and bm.num_free_blocks == 2


def test_fork_then_write_copies_the_shared_block() -> None:
    bm = BlockManager(8, BS)
    parent = make_seq(list(range(6)), "p")
    assert admit(bm, parent)
    child = make_seq(list(range(6)), "c")
    bm.fork(parent, child)
    assert bm.ref_counts[parent.block_table[1]] == 2
    child.token_ids.append(7)
    assert bm.allocate(child, 1)
    assert child.block_table[0] == parent.block_table[0]  # full block still shared
    assert child.block_table[1] != parent.block_table[1]  # partial block copied
    assert bm.pending_copies == [(parent.block_table[1], child.block_table[1])]
    bm.check_invariants()


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate/append/fork/free/evict sequences keep the books consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(12, BS, enable_prefix_caching=True)
        self.live: list[Sequence] = []
        self.n = 0

    def _new_id(self) -> str:
        self.n += 1
        return f"s{self.n}"

    @rule(tokens=st.lists(st.integers(0, 3), min_size=1, max_size=14))
    def allocate(self, tokens: list[int]) -> None:
        seq = make_seq(tokens, self._new_id())
        if admit(self.bm, seq):
            self.live.append(seq)
        else:
            assert seq.block_table == []

    @precondition(lambda self: self.live)
    @rule(data=st.data(), extra=st.lists(st.integers(0, 3), min_size=1, max_size=6))
    def append(self, data: st.DataObject, extra: list[int]) -> None:
        seq = data.draw(st.sampled_from(self.live))
        before = list(seq.block_table)
        seq.token_ids.extend(extra)
        if self.bm.allocate(seq, len(extra)):
            seq.num_computed_tokens += len(extra)
            self.bm.cache_full_blocks(seq)
        else:
            del seq.token_ids[-len(extra) :]
            assert seq.block_table == before

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(self.live))
        child = make_seq(parent.token_ids, self._new_id())
        self.bm.fork(parent, child)
        self.live.append(child)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.live))
        self.live.remove(seq)
        self.bm.free(seq)

    @rule(count=st.integers(0, 4))
    def evict(self, count: int) -> None:
        self.bm.evict_cached(count)

    @invariant()
    def books_balance(self) -> None:
        self.bm.check_invariants()
        counts = [0] * self.bm.num_blocks
        for seq in self.live:
            assert len(set(seq.block_table)) == len(seq.block_table)
            assert len(seq.block_table) * BS >= seq.num_computed_tokens
            for b in seq.block_table:
                counts[b] += 1
        assert counts == self.bm.ref_counts
        self.bm.pending_copies.clear()


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_tables_are_packed_as_rows_of_one_width() -> None:
    packed = array("q", [9])
    extend_with_tables(packed, [[4, 5, 6], [7], [1, 2, 3, 8, 8]], 3)
    assert packed.tolist() == [9, 4, 5, 6, 7, 0, 0, 1, 2, 3]

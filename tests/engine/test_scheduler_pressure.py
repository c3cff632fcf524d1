"""The scheduler under KV-cache pressure and long queues, driven without a model: admission
keeps a watermark, preemption takes the newest sequence, recomputed tokens are counted, and
the work per request stays flat as the queue grows (issue: throughput collapse past one batch).
"""

from __future__ import annotations

import random

from deploylab.engine.block_manager import BlockManager
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import Scheduler
from deploylab.engine.sequence import Sequence, SequenceStatus


def make_seq(i: int, n_prompt: int, max_tokens: int, rng: random.Random) -> Sequence:
    ids = [rng.randrange(100, 30000) for _ in range(n_prompt)]
    return Sequence(f"r{i}", ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True), i)


def step(sch: Scheduler) -> int:
    """One scheduler step with a fake model: every sampling sequence gets token 7."""
    out = sch.schedule()
    sampled = [item.seq for item in out.scheduled if item.samples]
    sch.update_after_step(out)
    for seq in sampled:
        seq.token_ids.append(7)
        if seq.num_output_tokens >= (seq.params.max_tokens or 0):
            sch.finish(seq, "length")
    return len(out.scheduled)


def replay(n: int, num_blocks: int, max_seqs: int = 32, seed: int = 0) -> tuple[int, Scheduler]:
    """Run `n` requests (prompts and outputs of 16-128 tokens) to the end; steps taken."""
    rng = random.Random(seed)
    bm = BlockManager(num_blocks, 16)
    sch = Scheduler(bm, max_seqs, 512)
    for i in range(n):
        sch.add(make_seq(i, rng.randint(16, 128), rng.randint(16, 128), rng))
    steps = 0
    while sch.has_unfinished():
        step(sch)
        steps += 1
        assert steps < 100 * n, "the scheduler stopped making progress"
    bm.check_invariants()
    assert bm.num_free_blocks == num_blocks
    return steps, sch


def test_admission_keeps_the_watermark_free_while_others_run() -> None:
    rng = random.Random(0)
    bm = BlockManager(200, 16)
    sch = Scheduler(bm, 8, 4096, watermark=0.05)  # 10 blocks
    assert sch.watermark_blocks == 10
    sch.add(make_seq(0, 16 * 100, 4, rng))  # 100 blocks for its prompt
    sch.add(make_seq(1, 16 * 85, 4, rng))  # leaves 200 - 100 - 85 = 15 free: admitted
    sch.add(make_seq(2, 16 * 6, 4, rng))  # would leave 9 < 10 free: waits
    out = sch.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["r0", "r1"]
    assert sch.num_waiting == 1 and bm.num_free_blocks >= sch.watermark_blocks


def test_a_lone_request_may_use_every_block() -> None:
    rng = random.Random(0)
    bm = BlockManager(10, 16)
    sch = Scheduler(bm, 8, 4096, watermark=0.5)
    sch.add(make_seq(0, 16 * 10 - 1, 1, rng))  # 159 prompt tokens + 1 output = 10 blocks
    while sch.has_unfinished():
        step(sch)
    assert sch.num_preemptions == 0


def test_preemption_takes_the_newest_running_sequence() -> None:
    rng = random.Random(0)
    bm = BlockManager(12, 16)
    sch = Scheduler(bm, 8, 4096, watermark=0.0)
    seqs = [make_seq(i, 16 * 4, 64, rng) for i in range(3)]  # 4 blocks each: all 12 taken
    for seq in seqs:
        sch.add(seq)
    step(sch)  # prefill: each has 64 + 1 tokens and needs a 5th block for its next token
    assert bm.num_free_blocks == 0
    out = sch.schedule()
    # r0 needs a block first: the newest (r2) goes, not r1 (the next in line); its 4 blocks
    # then give r0 and r1 theirs.
    assert [s.request_id for s in out.preempted] == ["r2"]
    assert [s.seq.request_id for s in out.scheduled] == ["r0", "r1"]
    assert [s.request_id for s in sch.waiting] == ["r2"]
    assert seqs[2].status is SequenceStatus.WAITING and seqs[2].num_computed_tokens == 0


def test_the_newest_sequence_preempts_itself_rather_than_an_older_one() -> None:
    rng = random.Random(0)
    bm = BlockManager(8, 16)
    sch = Scheduler(bm, 8, 4096, watermark=0.0)
    for i in range(2):
        sch.add(make_seq(i, 16 * 4, 64, rng))
    step(sch)
    sch.running.reverse()  # the newer one asks first
    out = sch.schedule()
    assert [s.request_id for s in out.preempted] == ["r1"]
    assert [s.seq.request_id for s in out.scheduled] == ["r0"]


def test_recomputed_tokens_are_the_tokens_computed_twice() -> None:
    rng = random.Random(1)
    bm = BlockManager(12, 16, enable_prefix_caching=False)
    sch = Scheduler(bm, 8, 4096, watermark=0.0)
    for i in range(3):
        sch.add(make_seq(i, 16 * 4, 20, rng))
    step(sch)
    out = sch.schedule()
    lost = {s.request_id: s.max_computed_tokens for s in out.preempted}
    assert lost == {"r2": 64}  # its prompt; its first output token was not computed yet
    sch.update_after_step(out)
    for item in out.scheduled:
        item.seq.token_ids.append(7)
    while sch.has_unfinished():
        step(sch)
    # Without a prefix cache, readmission recomputes every token the preemption dropped.
    assert sch.num_preemptions == 1
    assert sch.num_recomputed_tokens == 64


def test_prefix_cache_spares_recomputation_after_preemption() -> None:
    rng = random.Random(1)
    bm = BlockManager(12, 16, enable_prefix_caching=True)
    sch = Scheduler(bm, 8, 4096, watermark=0.0)
    for i in range(3):
        sch.add(make_seq(i, 16 * 4, 10, rng))
    while sch.has_unfinished():
        step(sch)
    # r0 and r1 each took one of r2's dropped blocks (its tail, evicted first); its first two
    # stayed cached, so only the last 32 of its 64 tokens are computed again.
    assert sch.num_preemptions == 1
    assert sch.num_recomputed_tokens == 32


def test_work_per_request_stays_flat_as_the_queue_grows() -> None:
    """Twice the requests take about twice the steps, and the recomputation per request stays
    bounded, with a cache that holds only two thirds of a full batch at its final lengths."""
    counts = {}
    for n in (64, 128, 256):
        steps, sch = replay(n, num_blocks=192)
        counts[n] = (steps, sch.num_preemptions, sch.num_recomputed_tokens)
    s64, s128, s256 = (counts[n][0] for n in (64, 128, 256))
    assert s128 <= 2.2 * s64 and s256 <= 2.2 * s128
    for n, (_, preemptions, recomputed) in counts.items():
        assert preemptions <= n // 2, counts
        assert recomputed <= 32 * n, counts

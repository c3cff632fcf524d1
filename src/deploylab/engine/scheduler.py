"""`Scheduler`: continuous batching with chunked prefill and preemption by recompute.

Every step builds a batch under a token budget (`max_num_batched_tokens`):

1. running sequences that decode (one token each) come first, in arrival order, so a long
   prompt never stalls them; then running sequences in the middle of a chunked prefill;
2. if nothing had to be preempted, waiting sequences are admitted in FIFO order while the
   budget, `max_num_seqs` and free blocks allow; a prompt whose prefix is in the prefix cache
   starts after the cached part; a prompt larger than the remaining budget gets a chunk.

Admission never over-commits the cache: a sequence is admitted only if `watermark_blocks`
stay free after its allocation, headroom for the running sequences to grow into. When a
running sequence still needs a block and none is free, the newest running sequence (latest
arrival) is preempted: its blocks are freed (its full blocks stay in the prefix cache, so
readmission recomputes only what was evicted meanwhile) and it goes back to the front of the
waiting queue, keeping its generated tokens. Preemptions and recomputed tokens are counted.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from deploylab.engine.block_manager import BlockManager
from deploylab.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    """A sequence in this step's batch and how many of its tokens are computed now."""

    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the sequence, so a token is sampled."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    """One step's batch."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Tokens computed in this step."""
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to run."""
        return not self.scheduled


def _arrival(seq: Sequence) -> int:
    return seq.arrival


class Scheduler:
    """Owns the waiting and running queues and decides each step's batch."""

    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        watermark: float = 0.01,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Blocks kept free at admission: 1% of the cache, as vLLM's block-manager watermark.
        self.watermark_blocks = math.ceil(watermark * block_manager.num_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_recomputed_tokens = 0  # tokens computed again after a preemption
        # Multi-LoRA hook (engine/lora): admit(seq, running) is False while seq's adapter
        # has no device slot free; that request waits, the ones behind it go ahead.
        self.lora_gate: Callable[[Sequence, list[Sequence]], bool] | None = None

    @property
    def num_waiting(self) -> int:
        """Sequences not yet (or no longer) running."""
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        """Sequences holding KV blocks."""
        return len(self.running)

    def has_unfinished(self) -> bool:
        """True while any sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_forked(self, seq: Sequence) -> None:
        """Run a sample forked from a running sequence (it shares the parent's blocks)."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's batch and allocate its KV slots."""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        decodes, chunks = [], []
        for s in self.running:
            left = len(s.token_ids) - s.num_computed_tokens - s.num_draft_tokens
            if left == 1:  # a decode (with its speculative drafts, if any)
                decodes.append(s)
            elif left > 1:
                chunks.append(s)
        pending = deque(decodes + chunks)
        while pending and budget > 0:
            seq = pending.popleft()
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.allocate(seq, n):
                # The newest unscheduled sequence goes (this one, if nothing newer waits).
                victim = max(pending, key=_arrival, default=seq)
                if victim is seq or victim.arrival < seq.arrival:
                    victim = seq
                else:
                    pending.remove(victim)
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSeq(seq, n))
                budget -= n
        if not out.preempted:
            budget = self._admit(out, budget)
        out.block_copies = self.block_manager.pending_copies
        self.block_manager.pending_copies = []
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> int:
        bm = self.block_manager
        # Samples still to fork from running sequences hold their slots already.
        reserved = sum(s.pending_forks for s in self.running)
        held: list[Sequence] = []  # waiting for a LoRA slot
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if len(self.running) + reserved + 1 + seq.pending_forks > self.max_num_seqs:
                break  # room for all `n` samples, forked once the prompt is computed
            if self.lora_gate is not None and not self.lora_gate(seq, self.running):
                held.append(self.waiting.popleft())
                continue
            cached = bm.lookup_prefix(seq)
            num_cached = len(cached) * bm.block_size
            loaded = bm.lookup_offloaded(seq, len(cached))  # KV tiers copy these back
            num_loaded = loaded * bm.block_size
            n = min(seq.num_tokens - num_cached - num_loaded, budget)
            # The watermark guards running sequences; alone, a request may use every block.
            reserve = self.watermark_blocks if self.running else 0
            if not bm.allocate(seq, num_loaded + n, cached, reserve=reserve):
                break
            bm.load_offloaded(seq, len(cached), loaded)
            bm.record_lookup(seq.num_tokens, num_cached)
            self.waiting.popleft()
            num_cached += num_loaded
            seq.num_computed_tokens = num_cached
            if not seq.admitted:
                seq.num_cached_tokens = num_cached
                seq.admitted = True
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            reserved += seq.pending_forks
            out.scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        self.waiting.extendleft(reversed(held))
        return budget

    def update_after_step(self, out: SchedulerOutput) -> None:
        """Mark the step's tokens computed and offer full blocks to the prefix cache."""
        for item in out.scheduled:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            if start < seq.max_computed_tokens:  # recomputing what a preemption dropped
                self.num_recomputed_tokens += min(end, seq.max_computed_tokens) - start
            else:
                seq.max_computed_tokens = end
            seq.num_computed_tokens = end
            self.block_manager.cache_full_blocks(seq)

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        """End `seq` (stop, length or abort) and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

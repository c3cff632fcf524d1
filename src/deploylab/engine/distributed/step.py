"""A step's batch as rank 0 sends it to the other ranks, and its replica on a worker.

The workers keep no request state: each message carries, per scheduled sequence, what the
model runner reads (its position, block table, the chunk's token ids, draft and prompt
counts), so a worker's `ModelRunner.execute` builds the same batch with its own KV heads.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence

# (num_computed, num_new, num_tokens, block_table, ids, drafts, prompt_tokens, prompt_lp)
Item = tuple[int, int, int, list[int], bytes, int, int, "int | None"]


@dataclass
class StepMessage:
    """One step's batch in plain picklable values."""

    items: list[Item]
    block_copies: list[tuple[int, int]]


def encode_step(out: SchedulerOutput) -> StepMessage:
    """The message rank 0 sends for `out`."""
    items: list[Item] = []
    for s in out.scheduled:
        seq, n = s.seq, s.num_new_tokens
        p0 = seq.num_computed_tokens
        ids = seq.input_ids(p0, p0 + n)
        items.append(
            (
                p0,
                n,
                seq.num_tokens,
                list(seq.block_table),
                ids.tobytes(),
                seq.num_draft_tokens,
                seq.num_prompt_tokens,
                seq.params.prompt_logprobs,
            )
        )
    return StepMessage(items, list(out.block_copies))


class _Window:
    """`token_ids[p]` for the positions a step reads."""

    def __init__(self, start: int, ids: array) -> None:
        self.start = start
        self.ids = ids

    def __getitem__(self, p: int) -> int:
        return int(self.ids[p - self.start])


class StepSeq:
    """The parts of a `Sequence` that `ModelRunner` reads, rebuilt from a message item."""

    def __init__(self, item: Item) -> None:
        p0, n, total, table, raw, drafts, prompt_tokens, prompt_lp = item
        ids = array("q")
        ids.frombytes(raw)
        self.num_computed_tokens = p0
        self.num_tokens = total
        self.block_table = table
        self.num_draft_tokens = drafts
        self.num_prompt_tokens = prompt_tokens
        self.params = SimpleNamespace(prompt_logprobs=prompt_lp)
        self.lora_id = None  # adapters do not run under TP (refused at start-up)
        self.token_ids = _Window(p0, ids)
        self._ids = ids

    def input_ids(self, start: int, end: int) -> array:
        """Token ids `[start, end)` of this step's chunk."""
        a = self.token_ids.start
        return self._ids[start - a : end - a]


def decode_step(msg: StepMessage) -> SchedulerOutput:
    """The worker's `SchedulerOutput` for a message."""
    scheduled = [ScheduledSeq(cast(Sequence, StepSeq(item)), item[1]) for item in msg.items]
    return SchedulerOutput(scheduled=scheduled, block_copies=msg.block_copies)


def describe(obj: Any) -> str:
    """A short text of an exception for the other side of the pipe."""
    return f"{type(obj).__name__}: {obj}"

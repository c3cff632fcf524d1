"""`Sequence`: one request's tokens, progress, KV blocks and output state."""

from __future__ import annotations

import enum
from array import array
from typing import TYPE_CHECKING

from deploylab.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from deploylab.engine.detokenizer import IncrementalDetokenizer
    from deploylab.engine.outputs import TokenLogprobs
    from deploylab.engine.structured import StructuredState


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """A request inside the engine.

    `token_ids` is prompt + generated tokens; `num_computed_tokens` of them have their keys
    and values in the KV cache (blocks listed in `block_table`). Preemption resets
    `num_computed_tokens` to 0 but keeps the generated tokens, so the sequence resumes by
    recomputing them.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival: int,
        prompt: str | None = None,
        index: int = 0,
    ) -> None:
        self.request_id = request_id
        self.index = index  # which of the request's `n` samples this is (its choice index)
        # Samples still to fork from this one once its prompt is computed (n - 1 at first).
        self.pending_forks = params.n - 1 if index == 0 else 0
        self.prompt = prompt
        self.params = params
        self.arrival = arrival
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        # The prompt as packed int64, made once at admission (off the step loop when the
        # server tokenises on another thread): a prefill step copies slices of it.
        self.prompt_array = array("q", prompt_token_ids)
        self.num_computed_tokens = 0
        self.max_computed_tokens = 0  # high-water mark of num_computed_tokens (preemptions)
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.admitted = False
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of the full blocks of token_ids
        self.block_tokens: list[tuple[int, ...]] = []  # those blocks' token ids (hash order)
        self.num_hashed_blocks = 0  # leading blocks of block_table offered to the prefix cache
        self.num_draft_tokens = 0  # speculative drafts at the end of token_ids (this step only)
        # A token tree of drafts: each draft's parent (-1: the last real token), parents
        # before children; None for a chain (each draft follows the one before it).
        self.draft_parents: list[int] | None = None
        self.lora_id = 0  # the LoRA adapter's load id (engine/lora); 0 = the base model
        self.lora_name: str | None = None
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.generator: torch.Generator | None = None
        self.logprobs: list[TokenLogprobs] = []
        # Prompt-token logprobs (`params.prompt_logprobs`): None for the first token.
        self.prompt_logprobs: list[TokenLogprobs | None] = []
        self.prompt_logprobs_sent = False
        self.structured: StructuredState | None = None  # a grammar's token mask (structured.py)
        self.detokenizer: IncrementalDetokenizer | None = None
        self.text = ""
        self.num_emitted_tokens = 0  # tokens already reported in a delta
        self.num_emitted_chars = 0

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens so far."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens (a copy)."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        """The prompt tokens (a copy)."""
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        """True once stopped, cut at its length limit or aborted."""
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)}, "
            f"{self.status.value})"
        )

    def fork(self, index: int) -> Sequence:
        """A sibling sample that shares this sequence's prompt (its blocks are shared by
        `BlockManager.fork`); its own generator, logprobs and text start empty."""
        child = Sequence(
            self.request_id, self.prompt_token_ids, self.params, self.arrival, self.prompt, index
        )
        child.prompt_array = self.prompt_array
        child.lora_id, child.lora_name = self.lora_id, self.lora_name
        child.admitted = True
        child.num_cached_tokens = self.num_cached_tokens
        child.block_hashes = list(self.block_hashes)
        child.block_tokens = list(self.block_tokens)
        child.prompt_logprobs = self.prompt_logprobs
        return child

    def input_ids(self, start: int, end: int) -> array:
        """Token ids `[start, end)` as packed int64."""
        if end <= self.num_prompt_tokens:
            return self.prompt_array[start:end]
        return array("q", self.token_ids[start:end])

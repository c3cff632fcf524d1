"""What an ARMT executor returns, and the checks on its input."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deploylab.armt.memory import MemoryState
from deploylab.errors import UsageError


@dataclass
class ARMTOutput:
    """Final-norm hidden states and the memory after the last segment.

    `hidden` `[B, N, D]` holds every token (only when asked for: it grows with the context);
    `last_hidden` `[B, D]` is the last token's, enough for next-token logits.
    """

    last_hidden: torch.Tensor
    memory: MemoryState
    num_segments: int
    num_steps: int  # layer calls (sequential) or grouped steps (diagonal)
    hidden: torch.Tensor | None = None


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`input_ids` as a `[B, N]` integer tensor with ids in range; UsageError otherwise."""
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise UsageError(
            f"input_ids must have shape [batch, tokens] with at least one token, "
            f"got {tuple(input_ids.shape)}."
        )
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise UsageError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}.")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise UsageError(
            f"Token ids must lie in [0, {vocab_size}); got ids from {low} to {high}. "
            "Tokenize with the model's own tokenizer."
        )
    return input_ids

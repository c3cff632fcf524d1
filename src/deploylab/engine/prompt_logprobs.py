"""Prompt-token logprobs (`SamplingParams.prompt_logprobs`) from a prefill chunk's logits."""

from __future__ import annotations

import torch

from deploylab.engine.outputs import TokenLogprobs
from deploylab.engine.sequence import Sequence


def record_prompt_logprobs(seq: Sequence, p0: int, logits: torch.Tensor) -> None:
    """Extend `seq.prompt_logprobs` with the chunk starting at position `p0`.

    Row j of `logits` is the distribution after token `p0 + j`, so it scores prompt token
    `p0 + j + 1`. The first prompt token has no context: its entry is None (as in OpenAI's
    `echo` responses). Positions already recorded (a preempted sequence recomputes its prompt)
    are skipped, so the list always has one entry per prompt token it covered.
    """
    k = seq.params.prompt_logprobs or 0
    entries = seq.prompt_logprobs
    if not entries:
        entries.append(None)
    first = len(entries) - 1 - p0  # first row not recorded yet
    last = min(logits.shape[0], seq.num_prompt_tokens - 1 - p0)  # rows that score a prompt token
    if first < 0 or first >= last:  # nothing new (or a gap: cannot happen without caching)
        return
    with torch.inference_mode():
        logp = torch.log_softmax(logits[first:last].float(), dim=-1)
        targets = seq.prompt_token_ids[p0 + first + 1 : p0 + last + 1]
        target_t = torch.tensor(targets, dtype=torch.int64, device=logp.device)
        chosen = logp.gather(1, target_t[:, None]).squeeze(1).tolist()
        top_ids: list[list[int]] = []
        top_vals: list[list[float]] = []
        if k:
            top = logp.topk(k, dim=-1)
            top_vals, top_ids = top.values.tolist(), top.indices.tolist()
    for j, (token, lp) in enumerate(zip(targets, chosen, strict=True)):
        alternatives = tuple(zip(top_ids[j], top_vals[j], strict=True)) if k else ()
        entries.append(TokenLogprobs(token, lp, alternatives))

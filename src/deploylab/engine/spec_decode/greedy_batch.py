"""Greedy verification of a step's drafting sequences at once: one argmax over every draft
row (stop tokens banned below `min_tokens`, as the sampler does) and one device sync, then
each sequence's accepted prefix (a chain) or kept path (a token tree)."""

from __future__ import annotations

import torch

from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.tree_drafts import row_offsets, walk_greedy


def greedy_best(
    spans: list[tuple[Sequence, int]], logits: torch.Tensor, eos_token_ids: list[int]
) -> list[int]:
    """The argmax of every row of `spans` ((sequence, first row), k + 1 rows each) of the
    float32 logits, stop tokens banned where the row's output index is below min_tokens."""
    rows: list[int] = []
    for seq, first in spans:
        rows.extend(range(first, first + seq.num_draft_tokens + 1))
    index = torch.tensor(rows, dtype=torch.int64, device=logits.device)
    sub = logits.index_select(0, index)
    at = 0
    for seq, _ in spans:
        params, n_out = seq.params, seq.num_output_tokens - seq.num_draft_tokens
        tree = seq.draft_parents
        offsets = row_offsets(tree) if tree is not None else range(seq.num_draft_tokens + 1)
        for j, offset in enumerate(offsets):
            if n_out + offset < params.min_tokens:
                banned = list(params.stop_token_ids)
                banned += [] if params.ignore_eos else eos_token_ids
                if banned:
                    sub[at + j, banned] = float("-inf")
        at += seq.num_draft_tokens + 1
    return sub.argmax(dim=-1).tolist()


def greedy_outcome(
    drafts: list[int], parents: list[int] | None, best: list[int], passed: list[bool]
) -> tuple[list[int], list[int] | None]:
    """The tokens one sequence emits from its rows' argmax `best` (k + 1) and the judge's
    verdicts `passed` (a chain keeps drafts equal to the argmax or passed), and the kept
    tree path (None for a chain)."""
    if parents is not None:
        path = walk_greedy(parents, drafts, best)
        return [drafts[c] for c in path] + [best[path[-1] + 1 if path else 0]], path
    n = 0
    while n < len(drafts) and (drafts[n] == best[n] or passed[n]):
        n += 1
    return drafts[:n] + [best[n]], None

"""Greedy verification of a step's drafting sequences at once: one argmax over every draft
row (stop tokens banned below `min_tokens`, as the sampler does) and one device sync, then
each sequence's accepted prefix (a chain) or kept path (a token tree). Greedy requests under
a speculative cascade (lossy, opt-in) also get their deferral verdicts here, from one
softmax over the same rows (`greedy_cascade`)."""

from __future__ import annotations

import torch

from deploylab.engine.sequence import Sequence
from deploylab.engine.spec.cascades import DeferralRule
from deploylab.engine.spec_decode.tree_drafts import row_offsets, walk_greedy

_CPU_ROWS = 8  # rows per float64 softmax block on CPU (`_draft_and_max_probs`)


def _span_rows(spans: list[tuple[Sequence, int]]) -> list[int]:
    """The logits rows of `spans` ((sequence, first row), k + 1 rows each), in order."""
    rows: list[int] = []
    for seq, first in spans:
        rows.extend(range(first, first + seq.num_draft_tokens + 1))
    return rows


def _bans(
    spans: list[tuple[Sequence, int]], eos_token_ids: list[int]
) -> list[tuple[int, list[int]]]:
    """(row of the spans' rows, stop tokens banned there) where a row's output index is below
    min_tokens and the request has stop tokens."""
    out: list[tuple[int, list[int]]] = []
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
                    out.append((at + j, banned))
        at += seq.num_draft_tokens + 1
    return out


def banned_rows(
    spans: list[tuple[Sequence, int]], logits: torch.Tensor, eos_token_ids: list[int]
) -> torch.Tensor:
    """The rows of `spans` ((sequence, first row), k + 1 rows each) of the float32 logits,
    copied, with stop tokens at -inf where the row's output index is below min_tokens."""
    index = torch.tensor(_span_rows(spans), dtype=torch.int64, device=logits.device)
    sub = logits.index_select(0, index)
    for row, banned in _bans(spans, eos_token_ids):
        sub[row, banned] = float("-inf")
    return sub


def greedy_best(
    spans: list[tuple[Sequence, int]], logits: torch.Tensor, eos_token_ids: list[int]
) -> list[int]:
    """The argmax of every row of `spans`, stop tokens banned below min_tokens (as
    `banned_rows`). Only the banned rows are copied: copying every row cost ~30 ms at 288
    rows of a 49,152-token vocabulary on the CPU."""
    index = torch.tensor(_span_rows(spans), dtype=torch.int64, device=logits.device)
    best = logits.argmax(dim=-1).index_select(0, index)  # other rows: the few plain ones
    bans = _bans(spans, eos_token_ids)
    if bans:
        at = torch.tensor([r for r, _ in bans], dtype=torch.int64, device=logits.device)
        sub = logits.index_select(0, index.index_select(0, at))
        for i, (_, banned) in enumerate(bans):
            sub[i, banned] = float("-inf")
        best = best.index_copy(0, at, sub.argmax(dim=-1))
    return best.tolist()


def cascade_passed(
    logits: torch.Tensor, drafts: torch.Tensor, rule: str, alpha: float
) -> torch.Tensor:
    """Per row, whether a greedy cascade keeps the point-mass draft `drafts[row]` besides the
    argmax: p = the temperature-1 probabilities of the (banned) float32 `logits` in float64,
    as `verify_drafts` builds them. Token-level rules keep d iff d is in A (v1: q(d) = 1 ≥
    max p − α; v2: p(d) ≥ max p − α; v3: p(d) ≥ (1 − α) max p); sequence-level ones iff
    they use q (max q = 1; chow: 1 ≥ 1 − α, diff: 1 ≥ max p − α, opt: 1 ≥ max p − α·TV with
    TV = 1 − p(d)). Never a draft the target may not emit (p(d) = 0)."""
    pd, pmax = _draft_and_max_probs(logits, drafts)
    r = DeferralRule(rule)
    if r is DeferralRule.V1 or r is DeferralRule.DIFF:
        keep = 1.0 >= pmax - alpha
    elif r is DeferralRule.CHOW:
        keep = torch.full_like(pd, 1.0 >= 1 - alpha, dtype=torch.bool)
    elif r is DeferralRule.OPT:
        keep = 1.0 >= pmax - alpha * (1 - pd)
    elif r is DeferralRule.V2:
        keep = pd >= pmax - alpha
    else:
        keep = pd >= (1 - alpha) * pmax
    return keep & (pd > 0)


def _draft_and_max_probs(
    logits: torch.Tensor, drafts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """p(drafts[row]) and max p per row, p the float64 softmax of `logits`. On CPU in blocks
    of 8 rows: the same values, about twice as fast as one softmax over 72 rows of a
    49,152-token vocabulary (the float64 rows stay in cache)."""
    block = _CPU_ROWS if logits.device.type == "cpu" else max(len(drafts), 1)
    pd, pmax = [], []
    for i in range(0, len(drafts), block):
        p = logits[i : i + block].double().softmax(dim=-1)
        pd.append(p.gather(1, drafts[i : i + block, None])[:, 0])
        pmax.append(p.amax(dim=-1))
    return torch.cat(pd), torch.cat(pmax)


def greedy_cascade(
    spans: list[tuple[Sequence, int]],
    logits: torch.Tensor,
    eos_token_ids: list[int],
    rule: str,
    alpha: float,
) -> tuple[list[int], list[bool]]:
    """Per row of `spans` (chains, drafts still appended): the argmax and whether the cascade
    keeps the row's draft (`cascade_passed`; False on each span's last row, which scores no
    draft) — one argmax, one softmax and one device-to-host copy for all of them."""
    sub = banned_rows(spans, logits, eos_token_ids)
    drafts: list[int] = []
    for seq, _ in spans:
        k = seq.num_draft_tokens
        drafts.extend([*seq.token_ids[len(seq.token_ids) - k :], -1])
    d = torch.tensor(drafts, dtype=torch.int64, device=logits.device)
    passed = cascade_passed(sub, d.clamp_min(0), rule, alpha) & (d >= 0)
    best, keep = torch.stack([sub.argmax(dim=-1), passed.to(torch.int64)]).tolist()
    return best, [bool(x) for x in keep]


def greedy_outcome(
    drafts: list[int], parents: list[int] | None, best: list[int], passed: list[bool]
) -> tuple[list[int], list[int] | None]:
    """The tokens one sequence emits from its rows' argmax `best` (k + 1) and the verdicts
    `passed` of a lossy rule (judge, cascade; a chain keeps drafts equal to the argmax or
    passed), and the kept tree path (None for a chain)."""
    if parents is not None:
        path = walk_greedy(parents, drafts, best)
        return [drafts[c] for c in path] + [best[path[-1] + 1 if path else 0]], path
    n = 0
    while n < len(drafts) and (drafts[n] == best[n] or passed[n]):
        n += 1
    return drafts[:n] + [best[n]], None

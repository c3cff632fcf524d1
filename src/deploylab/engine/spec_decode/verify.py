"""Verify one sequence's drafts against the target's logits with the exact rules of
`engine/spec/single.py` (greedy: `greedy_verify`; sampled: `speculative_sampling` with the
proposer's point-mass draft distribution)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from deploylab.engine.outputs import TokenLogprobs
from deploylab.engine.sampler import Sampler, apply_min_p, apply_top_k_top_p
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec.cascades import cascade_verify
from deploylab.engine.spec.judge import judge_verify
from deploylab.engine.spec.sampling import ChainResult, sample_categorical
from deploylab.engine.spec.single import greedy_verify, point_mass_sampling
from deploylab.engine.spec_decode.tree_drafts import row_offsets, walk_greedy, walk_sampled


@dataclass
class Verified:
    """The tokens a sequence emits this step (accepted drafts, then one target token)."""

    tokens: list[int]
    logprobs: list[TokenLogprobs | None]
    num_accepted: int


def target_probs(
    logits: torch.Tensor, seq: Sequence, banned: list[int], offsets: list[int] | None = None
) -> torch.Tensor:
    """The distribution the sampler would draw from at each of the rows (k + 1, V): stop
    tokens banned below min_tokens, then temperature, top-k, top-p and min-p. `offsets`:
    each row's output index past the current one (a chain: 0..k; a tree: the depths)."""
    params = seq.params
    n_out = seq.num_output_tokens
    for j in range(logits.shape[0]):
        if n_out + (j if offsets is None else offsets[j]) < params.min_tokens and banned:
            logits[j, banned] = float("-inf")
    if params.greedy:  # float64: no ties created by rounding that argmax of logits lacks
        return logits.double().softmax(dim=-1)
    rows = logits.shape[0]
    scaled = logits / params.temperature
    if params.top_k > 0 or params.top_p < 1.0:
        scaled = apply_top_k_top_p(scaled, [params.top_k] * rows, [params.top_p] * rows)
    if params.min_p > 0.0:
        scaled = apply_min_p(scaled, [params.min_p] * rows)
    return scaled.softmax(dim=-1)


def verify_drafts(
    logits: torch.Tensor,
    drafts: list[int],
    seq: Sequence,
    banned: list[int],
    generator: torch.Generator,
    cascade: tuple[str, float] | None = None,
    judged: torch.Tensor | None = None,
) -> Verified:
    """Accept a prefix of `drafts` from float32 `logits` (len(drafts) + 1, V) (modified in
    place); the emitted tokens follow the target's distribution exactly, or with `cascade`
    (deferral rule, lenience) the cascade target's, or keep drafts the judge passed
    (`judged`, bool (len(drafts),)) too (both lossy, opt-in)."""
    params = seq.params
    raw = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
    p = target_probs(logits, seq, banned)
    d = torch.tensor([drafts], dtype=torch.int64, device=logits.device)
    if params.greedy and cascade is None and judged is None:
        result = greedy_verify(p[None], d)  # the common case: no draft distribution needed
        return _verified(result, raw, params)
    if cascade is None and judged is None:  # exact: point-mass drafts, no one-hot q needed
        return _verified(point_mass_sampling(p[None], d, generator), raw, params)
    if cascade is not None:
        return _verified(_cascade_chain(p, d, params.greedy, cascade, generator), raw, params)
    assert judged is not None
    q = torch.nn.functional.one_hot(d, p.shape[-1]).to(p.dtype)  # point-mass drafts
    # Greedy: rule = "the draft is the argmax" (point mass); sampled: speculative sampling.
    target = _argmax_mass(p) if params.greedy else p
    # never a draft the target may not emit (a stop token below min_tokens, top-k/p cut)
    allowed = _allowed(p, d[0])
    result = judge_verify(target[None], q, d, (judged.to(p.device) & allowed)[None], generator)
    return _verified(result, raw, params)


def _cascade_chain(
    p: torch.Tensor,
    d: torch.Tensor,
    greedy: bool,
    cascade: tuple[str, float],
    generator: torch.Generator,
) -> ChainResult:
    """`cascade_verify` of one chain (`p` (k + 1, V), `d` (1, k)) with point-mass drafts. A
    greedy request's target is the argmax's point mass, and the deferral test reads the
    temperature-1 probabilities (a draft within the lenience of the best is kept). Never a
    draft the target may not emit (p = 0: a stop token below min_tokens, a top-k/p cut),
    which rules that defer to a point-mass draft would keep: the chain ends before it, and
    the target's own token (greedy: the argmax) follows."""
    n = allowed_prefix(p, d[0])
    p, d = p[: n + 1], d[:, :n]
    target = _argmax_mass(p) if greedy else p
    if n == 0:  # the first draft is not allowed: only the target's token
        token = sample_categorical(target[:1], generator)
        return ChainResult(tokens=token[None], num_accepted=torch.zeros_like(token))
    q = torch.nn.functional.one_hot(d, p.shape[-1]).to(p.dtype)
    p_defer = p[None] if greedy else None
    return cascade_verify(target[None], q, d, cascade[0], cascade[1], generator, p_defer)


def _verified(result: Any, raw: torch.Tensor | None, params: Any) -> Verified:
    """The first row of a chain rule's result as a `Verified` (logprobs from `raw` rows)."""
    n = int(result.num_accepted[0])
    tokens: list[int] = result.tokens[0, : n + 1].tolist()
    logprobs: list[TokenLogprobs | None] = [None] * len(tokens)
    if raw is not None:
        logprobs = Sampler._logprobs(raw[: n + 1], tokens, [params] * len(tokens))
    return Verified(tokens, logprobs, n)


def verify_tree_drafts(
    logits: torch.Tensor,
    drafts: list[int],
    parents: list[int],
    seq: Sequence,
    banned: list[int],
    generator: torch.Generator,
) -> tuple[Verified, list[int]]:
    """Verify a token tree of drafts from its chunk's float32 `logits` (root row first,
    modified in place): greedy keeps the argmax child at each row, sampled requests keep
    children by recursive rejection of their point masses (exact). Returns what the
    sequence emits and the kept path (node indices)."""
    params = seq.params
    raw = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
    p = target_probs(logits, seq, banned, row_offsets(parents))
    if params.greedy:
        best: list[int] = p.argmax(dim=-1).tolist()
        path = walk_greedy(parents, drafts, best)
        last = best[path[-1] + 1 if path else 0]
    else:
        path, last = walk_sampled(parents, drafts, p, generator)
    tokens = [drafts[c] for c in path] + [last]
    logprobs: list[TokenLogprobs | None] = [None] * len(tokens)
    if raw is not None:  # each token's scoring row: the root, then the kept nodes
        rows = torch.tensor([0] + [c + 1 for c in path], device=raw.device)
        logprobs = Sampler._logprobs(raw.index_select(0, rows), tokens, [params] * len(tokens))
    return Verified(tokens, logprobs, len(path)), path


def _allowed(p: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """(k,) bool: p[j, drafts[j]] > 0, the drafts the target may emit at their rows."""
    return p[torch.arange(len(drafts), device=p.device), drafts] > 0


def allowed_prefix(p: torch.Tensor, drafts: torch.Tensor) -> int:
    """How many leading drafts (k,) the target may emit (`_allowed`) for rows (k + 1, V) of
    probabilities."""
    bad = (~_allowed(p, drafts)).nonzero()
    return int(bad[0, 0]) if len(bad) else len(drafts)


def _argmax_mass(p: torch.Tensor) -> torch.Tensor:
    """Each row's point mass on its most likely token (greedy's target distribution)."""
    return torch.nn.functional.one_hot(p.argmax(dim=-1), p.shape[-1]).to(p.dtype)

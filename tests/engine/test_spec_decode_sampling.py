"""Sampled speculative decoding keeps the target's distribution: a chi-square test of the
first three generated tokens against the exact probabilities from the plain engine."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence as Seq

import pytest
from scipy.stats import chisquare
from tests.engine.conftest import ModelParts

from deploylab.engine import LLMEngine, SamplingParams
from deploylab.engine.sequence import Sequence

PROMPT = [17, 301, 45, 99, 230, 17, 301, 45, 88, 411, 5, 17]
TOP_K = 3


def top_probs(engine: LLMEngine, prefix: list[int]) -> dict[int, float]:
    """The exact next-token distribution under temperature 1 and top-k 3 after `prefix`."""
    out = engine.add_request(f"p{len(engine._seqs)}-{prefix}", prefix, SamplingParams(
        temperature=0, max_tokens=1, logprobs=TOP_K
    ))  # fmt: skip
    while engine.has_unfinished_requests():
        engine.step()
    top = out.logprobs[0].top
    z = sum(math.exp(lp) for _, lp in top)
    return {t: math.exp(lp) / z for t, lp in top}


class TableProposer:
    """Proposes the most likely continuation for some first tokens and a token the target
    never samples (always rejected) for the others: both verification branches."""

    def __init__(self, table: dict[int, list[int]]) -> None:
        self.table = table

    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[list[int]]:
        out = []
        for seq, k in zip(seqs, ks, strict=True):
            drafts = self.table.get(seq.token_ids[len(PROMPT)], []) if seq.num_output_tokens else []
            out.append(drafts[seq.num_output_tokens - 1 :][:k])
        return out


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_tokens_follow_the_target_distribution(tiny: ModelParts, top_p: float) -> None:
    plain = tiny.engine()
    p1 = top_probs(plain, PROMPT)
    exact: dict[tuple[int, ...], float] = {}
    table: dict[int, list[int]] = {}
    for i, (a, pa) in enumerate(sorted(p1.items())):
        p2 = top_probs(plain, [*PROMPT, a])
        b_best = max(p2, key=p2.__getitem__)
        p3_best = top_probs(plain, [*PROMPT, a, b_best])
        table[a] = [b_best, max(p3_best, key=p3_best.__getitem__)] if i != 1 else [0, 0]
        for b, pb in p2.items():
            for c, pc in top_probs(plain, [*PROMPT, a, b]).items():
                exact[(a, b, c)] = pa * pb * pc
    if top_p < 1.0:  # recompute with the nucleus cut: drop tokens outside top_p's mass
        exact = nucleus(plain, p1, top_p)
    n = 2400
    engine = tiny.engine(
        speculative_config={"method": "ngram", "num_speculative_tokens": 2, "adaptive": False},
        max_num_seqs=256,
        seed=7,
    )
    assert engine.spec is not None
    engine.spec.proposer = TableProposer(table)
    params = SamplingParams(temperature=1.0, top_k=TOP_K, top_p=top_p, max_tokens=3,
                            ignore_eos=True)  # fmt: skip
    assert_follows(engine, params, exact, n)
    stats = engine.spec.stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # both branches ran


def assert_follows(
    engine: LLMEngine, params: SamplingParams, exact: dict[tuple[int, ...], float], n: int
) -> None:
    """Sample `n` requests of PROMPT and chi-square their outputs against `exact`."""
    seqs = [engine.add_request(f"s{i}", PROMPT, params) for i in range(n)]
    while engine.has_unfinished_requests():
        engine.step()
    counts = Counter(tuple(s.output_token_ids) for s in seqs)
    assert set(counts) <= set(exact)
    cells = sorted(exact)
    observed = [counts.get(c, 0) for c in cells]
    expected = [exact[c] * n for c in cells]
    assert chisquare(observed, expected).pvalue > 1e-3


def nucleus(engine: LLMEngine, p1: dict[int, float], top_p: float) -> dict[tuple[int, ...], float]:
    """Exact 3-token probabilities under top-k 3 and top-p (vLLM's nucleus rule)."""

    def cut(p: dict[int, float]) -> dict[int, float]:
        kept, mass = {}, 0.0
        for t, v in sorted(p.items(), key=lambda kv: -kv[1]):
            if mass >= top_p:
                break
            kept[t] = v
            mass += v
        z = sum(kept.values())
        return {t: v / z for t, v in kept.items()}

    out = {}
    for a, pa in cut(p1).items():
        for b, pb in cut(top_probs(engine, [*PROMPT, a])).items():
            for c, pc in cut(top_probs(engine, [*PROMPT, a, b])).items():
                out[(a, b, c)] = pa * pb * pc
    return out


def test_seeded_requests_reproduce(tiny: ModelParts) -> None:
    config = {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_min": 1,
        "adaptive": False,
    }
    params = SamplingParams(temperature=0.8, seed=11, max_tokens=24, ignore_eos=True)
    runs = []
    for others in (0, 5):  # the same request, alone and beside others
        engine = tiny.engine(speculative_config=config)
        extra = [engine.add_request(f"o{i}", PROMPT * 2, SamplingParams(temperature=1.0))
                 for i in range(others)]  # fmt: skip
        seq = engine.add_request("seeded", PROMPT * 3, params)
        while engine.has_unfinished_requests():
            engine.step()
        runs.append(seq.output_token_ids)
        assert all(s.is_finished for s in extra)
    assert runs[0] == runs[1]

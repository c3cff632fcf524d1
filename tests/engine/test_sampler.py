"""Sampler: truncation masks, penalties, min_tokens, the sampling distribution, seeds that
are reproducible whatever the batch, and logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from deploylab.engine import SamplingParams
from deploylab.engine.sampler import (
    Sampler,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
)
from deploylab.engine.sequence import Sequence

from .conftest import ModelParts


def seq_with(prompt: list[int], output: list[int], **params: object) -> Sequence:
    seq = Sequence("r", prompt, SamplingParams(**params), 0)  # type: ignore[arg-type]
    seq.token_ids.extend(output)
    return seq


def kept(row: torch.Tensor) -> list[int]:
    return torch.isfinite(row).nonzero().flatten().tolist()


def test_top_k_keeps_k_best() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [1.0, 5.0, 3.0, 4.0, 2.0]])
    out = apply_top_k_top_p(logits, [2, -1], [1.0, 1.0])
    assert kept(out[0]) == [1, 3]
    assert kept(out[1]) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(3, 1)
    out = apply_top_k_top_p(logits, [-1, -1, 2], [0.8, 0.81, 0.99])
    assert kept(out[0]) == [0, 1]  # 0.5 + 0.3 reaches 0.8
    assert kept(out[1]) == [0, 1, 2]
    assert kept(out[2]) == [0, 1]  # top-k applies too


def test_top_p_from_candidates_equals_the_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """The top-k candidate path (no full sort) keeps exactly what sorting keeps: peaked rows
    from the candidates, flat rows (nucleus past them) redone by sorting, a top-k larger
    than the candidates, and one too large for them (the sort for the whole call)."""
    from deploylab.engine import sampler

    gen = torch.Generator().manual_seed(0)
    vocab = 5000
    ranks = torch.arange(1, vocab + 1).float().log()
    peaked = torch.stack([(-3.0 * ranks)[torch.randperm(vocab, generator=gen)] for _ in range(4)])
    flat = torch.randn(3, vocab, generator=gen)
    logits = torch.cat([peaked, flat])
    cases = [
        ([-1] * 7, [0.9, 0.5, 0.99, 0.95, 0.9, 0.3, 0.999]),
        ([10, -1, 300, 600, -1, 2, 300], [0.9] * 7),
        ([5000, -1, 4999, 7, 1, -1, 1000], [0.7] * 7),
    ]
    calls = []
    real = sampler._sorted_top_k_top_p

    def counting(x: torch.Tensor, ks: list[int], ps: list[float]) -> torch.Tensor:
        calls.append(x.shape[0])
        return real(x, ks, ps)

    monkeypatch.setattr(sampler, "_sorted_top_k_top_p", counting)
    for top_k, top_p in cases:
        got = apply_top_k_top_p(logits, top_k, top_p)
        ks = [min(k, vocab) if k > 0 else vocab for k in top_k]
        want = real(logits, ks, top_p)
        assert torch.equal(torch.isfinite(got), torch.isfinite(want))
        assert torch.equal(got[torch.isfinite(got)], want[torch.isfinite(want)])
    # Sorted rows: the flat ones of the first two calls (some of them), all 7 of the third
    # (top-k 4999 is more than the candidates allow).
    assert calls[-1] == 7 and all(0 < c < 7 for c in calls[:-1])


def test_min_p_drops_unlikely_tokens() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.07, 0.03]])
    out = apply_min_p(probs.log(), [0.1])
    assert kept(out[0]) == [0, 1, 2]  # 0.03 < 0.1 * 0.6


def test_penalties_follow_their_formulas() -> None:
    row = torch.tensor([2.0, -2.0, 1.0, 0.5, 3.0])
    seq = seq_with([0, 1], [2, 2, 3], repetition_penalty=2.0)
    apply_penalties(row, seq, seq.params)
    assert row.tolist() == [1.0, -4.0, 0.5, 0.25, 3.0]
    row = torch.tensor([2.0, -2.0, 1.0, 0.5, 3.0])
    seq = seq_with([0, 1], [2, 2, 3], presence_penalty=0.5, frequency_penalty=0.25)
    apply_penalties(row, seq, seq.params)
    assert row.tolist() == pytest.approx([2.0, -2.0, 1.0 - 0.5 - 0.5, 0.5 - 0.5 - 0.25, 3.0])


def test_min_tokens_bans_eos_and_stop_ids() -> None:
    sampler = Sampler(torch.device("cpu"), eos_token_ids=[0])
    logits = torch.tensor([[9.0, 1.0, 8.0, 2.0]] * 3)
    seqs = [
        seq_with([1], [], temperature=0, min_tokens=2, stop_token_ids=[2]),
        seq_with([1], [3, 3], temperature=0, min_tokens=2),
        seq_with([1], [], temperature=0, min_tokens=2, ignore_eos=True),
    ]
    tokens, _ = sampler(logits, seqs)
    assert tokens == [3, 0, 0]


def test_sampling_follows_the_distribution() -> None:
    sampler = Sampler(torch.device("cpu"), seed=0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 8000
    seqs = [seq_with([1], [], temperature=1.0) for _ in range(n)]
    tokens, _ = sampler(probs.log().repeat(n, 1), seqs)
    freq = torch.bincount(torch.tensor(tokens), minlength=4).float() / n
    assert torch.allclose(freq, probs, atol=0.02)


def test_temperature_sharpens() -> None:
    sampler = Sampler(torch.device("cpu"), seed=1)
    logits = torch.tensor([0.0, 1.0]).repeat(4000, 1)
    seqs = [seq_with([1], [], temperature=0.25) for _ in range(4000)]
    tokens, _ = sampler(logits, seqs)
    share = sum(tokens) / 4000
    expected = 1 / (1 + math.exp(-4.0))
    assert share == pytest.approx(expected, abs=0.02)


def test_logprobs_shape_and_values() -> None:
    sampler = Sampler(torch.device("cpu"))
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    seqs = [seq_with([1], [], temperature=0, logprobs=2), seq_with([1], [], temperature=0)]
    ref = torch.log_softmax(logits, -1)
    tokens, lps = sampler(logits.clone(), seqs)
    assert tokens == [1, 2]
    assert lps[1] is None
    lp = lps[0]
    assert lp is not None and lp.token_id == 1
    assert lp.logprob == pytest.approx(ref[0, 1].item())
    assert [t for t, _ in lp.top] == [1, 2]
    assert [v for _, v in lp.top] == pytest.approx([ref[0, 1].item(), ref[0, 2].item()])


def test_logprobs_zero_gives_only_the_sampled_token(tiny: ModelParts) -> None:
    out = tiny.llm().generate([[5, 6, 7]], SamplingParams(max_tokens=4, logprobs=0, seed=1))[0]
    assert out.logprobs is not None and len(out.logprobs) == 4
    assert all(lp.top == () and lp.logprob <= 0 for lp in out.logprobs)
    assert [lp.token_id for lp in out.logprobs] == out.token_ids


def test_seed_is_reproducible_across_batch_compositions(tiny: ModelParts) -> None:
    target = [9, 8, 7, 6, 5]
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=20, ignore_eos=True)
    other = SamplingParams(temperature=1.0, max_tokens=25, ignore_eos=True)
    alone = tiny.llm().generate([target], seeded)[0].token_ids
    crowd = tiny.llm().generate(
        [[3, 4], target, list(range(40, 70)), [11] * 7],
        [other, seeded, other, SamplingParams(temperature=0.7, seed=5, max_tokens=9)],
    )
    assert crowd[1].token_ids == alone
    different_seed = SamplingParams(temperature=1.0, seed=4321, max_tokens=20, ignore_eos=True)
    assert tiny.llm().generate([target], different_seed)[0].token_ids != alone

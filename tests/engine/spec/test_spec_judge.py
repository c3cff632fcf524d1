"""Judge decoding: a silent judge is plain SS, delta is monotone, the head trains and reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deploylab.engine.spec import JudgeHead, judge_verify, speculative_sampling
from deploylab.errors import InvalidRequestError, ModelLoadError

HIDDEN = 32


def _chain(stats, n: int, gamma: int, seed: int):
    p, q = stats.cases()["random"]
    drafts = stats.sample_drafts(q, n, gamma, torch.Generator().manual_seed(seed))
    return p, q, p.expand(n, gamma + 1, -1), q.expand(n, gamma, -1), drafts


def _separable(n: int, seed: int):
    """Hidden states whose label is a fixed linear function of them (plus a margin)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(HIDDEN, generator=g)
    h = torch.randn(n, HIDDEN, generator=g)
    score = h @ w
    keep = score.abs() > 0.3
    return h[keep], score[keep] > 0


def test_a_judge_that_never_fires_is_plain_speculative_sampling(stats) -> None:
    _, _, pp, qq, drafts = _chain(stats, 20_000, 3, seed=1)
    head = JudgeHead(HIDDEN, delta=1.0)  # sigmoid(.) > 1 never holds
    hidden = torch.randn(20_000, 3, HIDDEN)
    judged = head.fires(hidden)
    assert not bool(judged.any())
    a = judge_verify(pp, qq, drafts, judged, torch.Generator().manual_seed(2))
    b = speculative_sampling(pp, qq, drafts, torch.Generator().manual_seed(2))
    assert torch.equal(a.tokens, b.tokens)


def test_raising_delta_never_raises_acceptance(stats) -> None:
    _, _, pp, qq, drafts = _chain(stats, 20_000, 4, seed=3)
    h, ok = _separable(4000, seed=4)
    head = JudgeHead(HIDDEN)
    head.fit(h, ok)
    hidden = torch.randn(20_000, 4, HIDDEN, generator=torch.Generator().manual_seed(5))
    prev = None
    for delta in (0.0, 0.2, 0.5, 0.8, 0.95, 1.0):
        res = judge_verify(
            pp, qq, drafts, head.fires(hidden, delta), torch.Generator().manual_seed(6)
        )
        if prev is not None:
            assert bool((res.num_accepted <= prev).all()), delta
        prev = res.num_accepted
    plain = speculative_sampling(pp, qq, drafts, torch.Generator().manual_seed(6))
    assert torch.equal(prev, plain.num_accepted)  # delta = 1: the judge is silent


def test_judge_decoding_is_not_exact(stats) -> None:
    """A judge that always fires keeps every draft: the first token then follows q, not p."""
    p, q, pp, qq, drafts = _chain(stats, stats.N, 1, seed=7)
    judged = torch.ones(stats.N, 1, dtype=torch.bool)
    res = judge_verify(pp, qq, drafts, judged, torch.Generator().manual_seed(8))
    assert bool((res.num_accepted == 1).all())
    stats.assert_follows(res.tokens[:, 0], q, "always-firing judge follows q")
    assert stats.chi2_pvalue(res.tokens[:, 0], p) < stats.P_MIN


def test_judge_head_learns_a_linear_rule_by_logistic_regression() -> None:
    h, ok = _separable(3000, seed=9)
    head = JudgeHead(HIDDEN)
    loss = head.fit(h[:2000], ok[:2000])
    assert loss < 0.2
    acc = (head.fires(h[2000:]) == ok[2000:]).float().mean().item()
    assert acc > 0.95
    assert sum(p.numel() for p in head.parameters()) == HIDDEN + 1


def test_judge_head_saves_and_loads(tmp_path: Path) -> None:
    h, ok = _separable(1000, seed=10)
    head = JudgeHead(HIDDEN, delta=0.7)
    head.fit(h, ok)
    path = tmp_path / "judge.safetensors"
    head.save(path)
    again = JudgeHead.load(path)
    assert again.delta == 0.7 and again.hidden_size == HIDDEN
    assert torch.equal(again(h), head(h))


def test_judge_errors_are_clear(tmp_path: Path) -> None:
    head = JudgeHead(HIDDEN)
    with pytest.raises(InvalidRequestError, match="width"):
        head(torch.randn(2, HIDDEN + 1))
    with pytest.raises(InvalidRequestError, match="0/1"):
        head.fit(torch.randn(4, HIDDEN), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ModelLoadError, match="no judge file"):
        JudgeHead.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a judge head"):
        JudgeHead.load(junk)
    p = torch.softmax(torch.randn(2, 3, 5), -1)
    with pytest.raises(InvalidRequestError, match="bool"):
        judge_verify(p, p[:, :2], torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2))

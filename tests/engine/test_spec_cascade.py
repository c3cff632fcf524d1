"""Speculative cascades in the engine (lossy, opt-in): the lenience changes what is kept as
the rule says, lenience 0 is the exact rule, and the settings are validated."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from tests.engine.test_spec_decode import NGRAM, ReplayProposer, greedy_params, looping_prompts, run

from deploylab.engine import SamplingParams
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.config import parse_speculative_config
from deploylab.engine.spec_decode.greedy_batch import greedy_cascade, greedy_outcome
from deploylab.engine.spec_decode.step_verify import VerifyStep
from deploylab.engine.spec_decode.verify import verify_drafts
from deploylab.errors import ConfigError


def _greedy_seq(k: int) -> Sequence:
    return Sequence("s", [5, 6, 7] + [0] * k, SamplingParams(temperature=0), arrival=0)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.6])
def test_greedy_cascade_keeps_exactly_the_drafts_within_the_lenience(alpha: float) -> None:
    """v3 keeps a draft iff p(draft) >= (1 - alpha) max p at its position (temperature-1
    probabilities); the first draft outside it is replaced by the argmax."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        logits = torch.randn(5, 50, generator=gen) * 2
        p = logits.double().softmax(-1)
        drafts = [int(torch.multinomial(p[j].float(), 1, generator=gen)) for j in range(4)]
        got = verify_drafts(logits.clone(), drafts, _greedy_seq(4), [], gen, ("v3", alpha))
        expect = 0
        while expect < 4 and p[expect, drafts[expect]] >= (1 - alpha) * p[expect].max():
            expect += 1
        assert got.num_accepted == expect, trial
        assert got.tokens[:expect] == drafts[:expect]
        assert got.tokens[expect] == int(p[expect].argmax())


def test_lenience_zero_is_exact_greedy_and_lenience_raises_acceptance(tiny: Any) -> None:
    prompts = looping_prompts(6, seed=3)
    params = greedy_params(len(prompts))
    plain = [o.token_ids for o in run(tiny.engine(), prompts, params)]
    strict = tiny.engine(speculative_config={**NGRAM, "cascade_rule": "v3", "cascade_alpha": 0})
    assert [o.token_ids for o in run(strict, prompts, params)] == plain
    lenient = tiny.engine(speculative_config={**NGRAM, "cascade_rule": "v3", "cascade_alpha": 1})
    run(lenient, prompts, params)
    s, x = strict.spec.stats, lenient.spec.stats  # type: ignore[union-attr]
    assert x.num_accepted_tokens / x.num_draft_tokens >= s.num_accepted_tokens / s.num_draft_tokens
    assert x.num_accepted_tokens == x.num_draft_tokens  # alpha 1 keeps every draft


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cascade_rule": "v9"}, "cascade_rule 'v9' is not one of"),
        ({"cascade_rule": "v3", "cascade_alpha": 1.5}, r"a number in \[0, 1\]"),
        ({"cascade_rule": "v3", "cascade_alpha": "0.3"}, "cascade_alpha must be a number"),
        ({"cascade_alpha": 0.3}, "cascade_alpha needs cascade_rule"),
    ],
)  # fmt: skip
def test_cascade_settings_are_validated(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_speculative_config({**NGRAM, **extra})
    ok = parse_speculative_config({**NGRAM, "cascade_rule": "v2", "cascade_alpha": 0.25})
    assert ok is not None and (ok.cascade_rule, ok.cascade_alpha) == ("v2", 0.25)


@pytest.mark.parametrize(
    "extra",
    [{}, {"cascade_rule": "v3", "cascade_alpha": 0.4}, {"judge_delta": 0.7}, {"tree_width": 2}],
)
def test_a_parsed_config_round_trips(extra: dict[str, Any]) -> None:
    """The server hands the engine `asdict` of the parsed config: parsing it again gives the
    same config (defaults such as cascade_alpha 0 without a rule are no error)."""
    from dataclasses import asdict

    first = parse_speculative_config({**NGRAM, **extra})
    assert first is not None
    assert parse_speculative_config(asdict(first)) == first


RULES = ("chow", "diff", "opt", "v1", "v2", "v3")
EOS = [2]


def _spans(
    gen: torch.Generator, vocab: int = 40
) -> tuple[torch.Tensor, list[tuple[Sequence, int]]]:
    """Random float32 logits and greedy chains of 1..5 drafts at scattered rows (other rows
    between them), some below min_tokens with stop tokens among their drafts: each draft is
    the row's argmax, its runner-up, a stop token or a sample."""
    spans: list[tuple[Sequence, int]] = []
    pieces: list[torch.Tensor] = []
    row = 0
    for i in range(8):
        k = int(torch.randint(1, 6, (), generator=gen))
        params = SamplingParams(
            temperature=0, min_tokens=int(torch.randint(0, 6, (), generator=gen)),
            stop_token_ids=[5, 6], ignore_eos=i % 4 == 3,
        )  # fmt: skip
        logits = torch.randn(k + 1, vocab, generator=gen) * (1 + i % 3)
        logits[:, [2, 5, 6]] += 2.0  # stop tokens often near the top
        ranked = logits.argsort(dim=-1, descending=True)
        drafts = []
        for j in range(k):
            pick = int(torch.randint(0, 4, (), generator=gen))
            p = logits[j].softmax(-1)
            choice = [
                ranked[j, 0],
                ranked[j, 1],
                torch.tensor(5),
                torch.multinomial(p, 1, generator=gen)[0],
            ]
            drafts.append(int(choice[pick]))
        outputs = [7] * int(torch.randint(0, 4, (), generator=gen))
        seq = Sequence(f"s{i}", [9, 10, 11], params, arrival=0)
        seq.token_ids += outputs + drafts
        seq.num_draft_tokens = k
        gap = torch.randn(i % 2, vocab, generator=gen)  # a plain row between chains
        pieces += [gap, logits]
        row += len(gap)
        spans.append((seq, row))
        row += k + 1
    return torch.cat(pieces), spans


def _banned(seq: Sequence) -> list[int]:
    return list(seq.params.stop_token_ids) + ([] if seq.params.ignore_eos else EOS)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("rule", RULES)
def test_batched_greedy_cascade_equals_the_per_sequence_rule(rule: str, alpha: float) -> None:
    """`greedy_cascade` over many chains at once emits what `verify_drafts` (one sequence,
    the cascade library rule) emits for each, token for token; no stop token below min_tokens
    is ever kept; the lossy verdicts matter (a draft other than the argmax is kept)."""
    gen = torch.Generator().manual_seed(RULES.index(rule) * 100 + int(alpha * 10))
    lossy = bans = 0
    for _ in range(10):
        logits, spans = _spans(gen)
        best, passed = greedy_cascade(spans, logits, EOS, rule, alpha)
        at = 0
        for seq, first in spans:
            k = seq.num_draft_tokens
            drafts = VerifyStep._take_drafts(seq)
            batched, _ = greedy_outcome(
                drafts, None, best[at : at + k + 1], passed[at : at + k + 1]
            )
            rows = logits[first : first + k + 1].clone()
            one = verify_drafts(rows, drafts, seq, _banned(seq), gen, (rule, alpha))
            assert batched == one.tokens, (seq, drafts)
            for j, token in enumerate(batched):
                if seq.num_output_tokens + j < seq.params.min_tokens:
                    assert token not in _banned(seq)
                    bans += drafts[j : j + 1] == [5]
            lossy += sum(t != b for t, b in zip(batched[:-1], best[at : at + k], strict=False))
            at += k + 1
    assert bans > 0  # banned stop tokens were offered
    if rule not in ("v2", "v3") or alpha > 0:  # v2/v3 at alpha 0 keep the argmax only
        assert lossy > 0
    else:
        assert lossy == 0


@pytest.mark.parametrize("rule", RULES)
def test_no_cascade_keeps_a_draft_the_target_may_not_emit(rule: str) -> None:
    """A stop token drafted below min_tokens (p = 0 there) is rejected by every rule at full
    lenience (which would keep any other draft), greedy on both paths and sampled; the
    target's own token follows it."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 30, generator=gen)
    logits[0, 5] = 9.0  # the stop token is the unbanned favourite
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5])
    seq = Sequence("s", [9, 10], params, arrival=0)
    seq.token_ids += [5, 7, 8]
    seq.num_draft_tokens = 3
    best, passed = greedy_cascade([(seq, 0)], logits, EOS, rule, 1.0)
    assert passed[0] is False and passed[1:3] == [True, True] and best[0] != 5
    drafts = VerifyStep._take_drafts(seq)
    batched, _ = greedy_outcome(drafts, None, best, passed)
    one = verify_drafts(logits.clone(), drafts, seq, [5, *EOS], gen, (rule, 1.0))
    assert batched == one.tokens == [best[0]]
    sampled = Sequence(
        "t", [9, 10], SamplingParams(temperature=1.0, min_tokens=2, stop_token_ids=[5]), 0
    )
    for _ in range(50):
        got = verify_drafts(logits.clone(), drafts, sampled, [5, *EOS], gen, (rule, 1.0))
        assert got.num_accepted == 0 and got.tokens[0] != 5


@pytest.mark.parametrize("logprobs", [None, 1], ids=["batched", "per-sequence"])
def test_a_greedy_cascade_batch_equals_its_requests_one_at_a_time(
    tiny: Any, logprobs: int | None
) -> None:
    """ngram with v3 at alpha 0.3: twelve greedy requests at once (every third never
    speculates; their chains verified together) give each request the output it gets alone —
    alone through the same batched rule, or with logprobs through the per-sequence rule. The
    lenience shows (some output differs from plain greedy decoding)."""
    prompts = looping_prompts(12, seed=5)
    params = greedy_params(len(prompts))
    config = {**NGRAM, "cascade_rule": "v3", "cascade_alpha": 0.3}
    engine = tiny.engine(speculative_config=config)
    together = [o.token_ids for o in run(engine, prompts, params)]
    alone = []
    single = tiny.engine(speculative_config=config)
    for prompt, p in zip(prompts, params, strict=True):
        alone += [o.token_ids for o in run(single, [prompt], [replace(p, logprobs=logprobs)])]
    assert together == alone
    assert together != [o.token_ids for o in run(tiny.engine(), prompts, params)]
    stats = engine.spec.stats  # type: ignore[union-attr]
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens


def test_the_engine_never_keeps_a_stop_token_below_min_tokens(tiny: Any) -> None:
    """v1 keeps every draft the target may emit; drafts replaying an unconstrained run offer
    its stop tokens below min_tokens, which neither the batched nor (with logprobs) the
    per-sequence path may keep."""
    prompts = looping_prompts(12, seed=2)
    free = run(tiny.engine(), prompts, [SamplingParams(temperature=0, max_tokens=8)] * 12)
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=10,
            min_tokens=2 + i % 4,
            logprobs=2 if i < 6 else None,
            stop_token_ids=free[i].token_ids[1:3],
        )  # fmt: skip
        for i in range(12)
    ]
    engine = tiny.engine(speculative_config={**NGRAM, "cascade_rule": "v1", "cascade_alpha": 0.3})
    engine.spec.proposer = ReplayProposer({f"r{i}": o.token_ids for i, o in enumerate(free)})  # type: ignore[union-attr]
    for out, p in zip(run(engine, prompts, params), params, strict=True):
        assert not set(out.token_ids[: p.min_tokens]) & set(p.stop_token_ids)
        assert len(out.token_ids) >= p.min_tokens
    assert engine.spec.stats.num_accepted_tokens > 0  # type: ignore[union-attr]

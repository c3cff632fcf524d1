"""Speculative cascades in the engine (lossy, opt-in): the lenience changes what is kept as
the rule says, lenience 0 is the exact rule, and the settings are validated."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.engine.test_spec_decode import NGRAM, greedy_params, looping_prompts, run

from deploylab.engine import SamplingParams
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.config import parse_speculative_config
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

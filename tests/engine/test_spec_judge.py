"""Judge decoding in the engine (lossy, opt-in): a judge that never fires is the exact rule,
one that always fires keeps every draft, the shipped judge fits the default model, and every
setting a user can get wrong is refused with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.engine.test_spec_decode import NGRAM, greedy_params, looping_prompts, run

from deploylab.engine import SamplingParams
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec.judge import JudgeHead
from deploylab.engine.spec_decode.config import parse_speculative_config
from deploylab.engine.spec_decode.judge import default_judge_path
from deploylab.engine.spec_decode.verify import verify_drafts
from deploylab.errors import ConfigError


def _judge_file(tmp_path: Path, hidden: int, bias: float, name: str = "j.safetensors") -> str:
    """A judge whose verdict is the sign of `bias` whatever the hidden state (weights 0)."""
    judge = JudgeHead(hidden, delta=0.5)
    with torch.no_grad():
        judge.linear.weight.zero_()
        judge.linear.bias.fill_(bias)
    path = tmp_path / name
    judge.save(path)
    return str(path)


def test_verify_keeps_a_draft_the_rule_rejects_only_when_the_judge_passes_it() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=gen)
    best = logits.argmax(-1).tolist()
    drafts = [best[0], (best[1] + 1) % 30, best[2]]  # the second draft is not the argmax
    seq = Sequence("s", [1, 2] + drafts, SamplingParams(temperature=0), arrival=0)
    no = verify_drafts(logits.clone(), drafts, seq, [], gen, None, torch.tensor([0, 0, 0]) > 0)
    assert (no.num_accepted, no.tokens) == (1, [best[0], best[1]])
    yes = verify_drafts(logits.clone(), drafts, seq, [], gen, None, torch.tensor([0, 1, 0]) > 0)
    assert yes.num_accepted == 3 and yes.tokens[:3] == drafts  # judged, then argmax agreed


def test_judge_that_never_fires_is_exact_and_one_that_always_fires_keeps_every_draft(
    tiny: Any, tmp_path: Path
) -> None:
    hidden = tiny.model.config.hidden_size
    prompts = looping_prompts(6, seed=3)
    params = greedy_params(len(prompts))
    plain = [o.token_ids for o in run(tiny.engine(), prompts, params)]
    never = tiny.engine(
        speculative_config={**NGRAM, "judge_path": _judge_file(tmp_path, hidden, -20.0)}
    )
    assert [o.token_ids for o in run(never, prompts, params)] == plain
    always = tiny.engine(
        speculative_config={**NGRAM, "judge_path": _judge_file(tmp_path, hidden, 20.0, "a")}
    )
    outs = run(always, prompts, params)
    st = always.spec.stats  # type: ignore[union-attr]
    assert st.num_draft_tokens and st.num_accepted_tokens == st.num_draft_tokens
    assert [len(o.token_ids) for o in outs] == [len(t) for t in plain]  # max_tokens still holds
    # (`run` checks the engine's invariants after every step and that no block leaks)


def test_judge_delta_overrides_the_files(tiny: Any, tmp_path: Path) -> None:
    """delta 1.0: sigmoid never exceeds it, so even an always-firing judge is the exact rule."""
    prompts = looping_prompts(4, seed=5)
    params = greedy_params(len(prompts))
    plain = [o.token_ids for o in run(tiny.engine(), prompts, params)]
    path = _judge_file(tmp_path, tiny.model.config.hidden_size, 20.0)
    eng = tiny.engine(speculative_config={**NGRAM, "judge_path": path, "judge_delta": 1.0})
    assert [o.token_ids for o in run(eng, prompts, params)] == plain


def test_shipped_judge_fits_the_default_model() -> None:
    judge = JudgeHead.load(default_judge_path("smollm2-135m-instruct"))
    assert judge.hidden_size == 576 and 0.5 <= judge.delta <= 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"judge": "yes"}, "judge must be true or false"),
        ({"judge": False, "judge_delta": 0.5}, "need judge: true"),
        ({"judge_path": 3}, "judge_path must be a file path"),
        ({"judge": True, "judge_delta": 2}, r"a number in \[0, 1\]"),
        ({"judge": True, "judge_delta": True}, "judge_delta must be a number"),
        ({"judge": True, "cascade_rule": "v3"}, "pick one lossy rule"),
    ],
)  # fmt: skip
def test_judge_settings_are_validated(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_speculative_config({**NGRAM, **extra})
    ok = parse_speculative_config({**NGRAM, "judge_delta": 0.9})
    assert ok is not None and (ok.judge, ok.judge_path, ok.judge_delta) == (True, None, 0.9)


def test_missing_or_foreign_judge_files_are_refused(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        tiny.engine(speculative_config={**NGRAM, "judge_path": str(tmp_path / "none")})
    (tmp_path / "junk").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a judge head"):
        tiny.engine(speculative_config={**NGRAM, "judge_path": str(tmp_path / "junk")})
    wide = _judge_file(tmp_path, tiny.model.config.hidden_size + 1, 1.0)
    with pytest.raises(ConfigError, match="Train a judge for this model"):
        tiny.engine(speculative_config={**NGRAM, "judge_path": wide})


@pytest.mark.parametrize("kind", ["sampled", "greedy-logprobs"])
def test_per_sequence_path_obeys_the_judge(tiny: Any, tmp_path: Path, kind: str) -> None:
    """Sampled requests and greedy ones with logprobs are verified one sequence at a time:
    an always-firing judge keeps every draft there too, a silent one does not."""
    hidden = tiny.model.config.hidden_size
    prompts = looping_prompts(4, seed=7)
    extra: dict[str, Any] = {"temperature": 1.0, "seed": 3}
    if kind == "greedy-logprobs":
        extra = {"temperature": 0, "logprobs": 2}
    params = [SamplingParams(max_tokens=16, ignore_eos=True, **extra) for _ in prompts]
    rates = []
    for name, bias in (("never", -20.0), ("always", 20.0)):
        path = _judge_file(tmp_path, hidden, bias, name)
        eng = tiny.engine(speculative_config={**NGRAM, "judge_path": path})
        outs = run(eng, prompts, params)
        assert all(len(o.token_ids) == 16 for o in outs)
        st = eng.spec.stats  # type: ignore[union-attr]
        assert st.num_draft_tokens > 0
        rates.append(st.num_accepted_tokens / st.num_draft_tokens)
    assert rates[1] == 1.0 and rates[0] < 1.0


def test_judge_training_pipeline_end_to_end(tiny_tok: Any, tmp_path: Path) -> None:
    """Generate with the target, label the non-argmax tokens, fit, choose delta, save, serve."""
    from deploylab.engine.spec_decode import train_head as th
    from deploylab.engine.spec_decode import train_judge as tj

    rows = th.generate(tiny_tok.llm(), th.prompts(0)[:8], 16, sampled=1.0, temperature=1.0)
    data = tj.examples(rows, tiny_tok.model, ratio=0.5)
    ok = data["ok"]
    assert len(ok) > 40 and data["hidden"].shape[1] == tiny_tok.model.config.hidden_size
    assert 0 < int(ok.sum()) < len(ok)  # both labels occur
    judge = JudgeHead(data["hidden"].shape[1])
    judge.fit(data["hidden"], ok)
    assert tj.auc(judge, data) > 0.6  # the training rows themselves are ranked
    chosen = tj.pick_delta(judge, data, precision=0.7)
    assert chosen["delta"] == 1.0 or chosen["precision"] >= 0.7
    judge.delta = chosen["delta"]
    path = tmp_path / "judge.safetensors"
    judge.save(path, {"label": "test"})
    engine = tiny_tok.engine(speculative_config={**NGRAM, "judge_path": str(path)})
    assert engine.spec is not None and engine.spec.judge is not None
    assert engine.spec.judge.delta == chosen["delta"]


class StopProposer:
    """Drafts the stop token at every position (a judge that always fires would keep it)."""

    free_to_propose = True

    def __init__(self, stop: int) -> None:
        self.stop = stop

    def propose(self, seqs: Any, ks: Any) -> list[list[int]]:
        return [[self.stop] * k for k in ks]


@pytest.mark.parametrize("logprobs", [None, 1])
def test_the_judge_never_keeps_a_stop_token_below_min_tokens(
    tiny: Any, tmp_path: Path, logprobs: int | None
) -> None:
    """Greedy batched path and per-sequence path: a stop token is not emitted before
    min_tokens, whatever the judge says."""
    path = _judge_file(tmp_path, tiny.model.config.hidden_size, 20.0)
    eng = tiny.engine(speculative_config={**NGRAM, "judge_path": path})
    assert eng.spec is not None
    stop = 7
    eng.spec.proposer = StopProposer(stop)  # type: ignore[assignment]
    params = [
        SamplingParams(
            temperature=0, max_tokens=20, min_tokens=12, stop_token_ids=[stop], logprobs=logprobs
        )
        for _ in range(3)
    ]
    outs = run(eng, looping_prompts(3, seed=9), params)
    for o in outs:
        assert stop not in o.token_ids[:11] and len(o.token_ids) >= 12

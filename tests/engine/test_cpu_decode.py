"""The compiled CPU decode step (`EngineConfig.cpu_compile`): the same greedy tokens as the
eager step across block boundaries and next to batched steps, and an eager fallback (logged)
when compiling fails."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from deploylab.engine import SamplingParams, cpu_decode

from .conftest import ModelParts

GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
PROMPTS = [[5 + i, 17, 99, 3 * i + 1] * (3 + 2 * i) for i in range(3)]


@pytest.fixture(autouse=True)
def _python_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_decode, "CPP_WRAPPER", False)  # compiles in half the time


def test_compiled_step_gives_the_eager_tokens(tiny: ModelParts) -> None:
    """One stream at a time (every decode step compiled: 40 tokens cross 2-3 blocks of 16),
    then three at once (batched steps take the eager path, single ones the compiled)."""
    eager = tiny.llm()
    compiled = tiny.llm(cpu_compile=True)
    runner = compiled.llm_engine.runner
    assert runner.cpu_decode is not None
    calls = []
    run = runner.cpu_decode.run

    def counted(*args: Any) -> torch.Tensor:
        calls.append(args)
        return run(*args)

    runner.cpu_decode.run = counted  # type: ignore[method-assign]
    for prompt in PROMPTS:
        want = eager.generate([prompt], GREEDY)[0].token_ids
        assert compiled.generate([prompt], GREEDY)[0].token_ids == want
    assert len(calls) == 3 * (GREEDY.max_tokens - 1)  # the first token comes from the prefill
    want_all = [o.token_ids for o in eager.generate(PROMPTS, GREEDY)]
    assert [o.token_ids for o in compiled.generate(PROMPTS, GREEDY)] == want_all


def test_two_compiled_engines_in_one_process_keep_their_own_graphs(tiny: ModelParts) -> None:
    """A second compiled engine with other weights and another LM head (int4, not float)
    compiles its own graph and gives its own eager tokens (it used to take the first
    engine's graph and fail its guards)."""
    from deploylab.engine.cpu_quant import quantize_lm_head
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    other = init_random_model(get_preset("tiny"), torch.float32, "cpu", seed=5)
    assert quantize_lm_head(other, "int4")
    second = ModelParts(tiny.path, other, None)
    first_c, second_c = tiny.llm(cpu_compile=True), second.llm(cpu_compile=True)
    assert first_c.llm_engine.runner.cpu_decode is not None
    assert second_c.llm_engine.runner.cpu_decode is not None
    prompt = [PROMPTS[1]]
    mine = second.llm().generate(prompt, GREEDY)[0].token_ids
    assert mine != tiny.llm().generate(prompt, GREEDY)[0].token_ids  # the models differ
    assert second_c.generate(prompt, GREEDY)[0].token_ids == mine
    assert (
        first_c.generate(prompt, GREEDY)[0].token_ids
        == tiny.llm().generate(prompt, GREEDY)[0].token_ids
    )


def test_failed_compile_decodes_eagerly(
    tiny: ModelParts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="deploylab.engine.cpu_decode"):
        llm = tiny.llm(cpu_compile=True)
    assert llm.llm_engine.runner.cpu_decode is None
    assert "no C++ compiler" in caplog.text and "decoding eagerly" in caplog.text
    out = llm.generate([PROMPTS[0]], GREEDY)[0].token_ids
    assert out == tiny.llm().generate([PROMPTS[0]], GREEDY)[0].token_ids


def test_cpu_compile_must_be_a_bool() -> None:
    from deploylab.engine import EngineConfig
    from deploylab.errors import ConfigError

    with pytest.raises(ConfigError, match="cpu_compile must be True or False"):
        EngineConfig(cpu_compile="yes")  # type: ignore[arg-type]

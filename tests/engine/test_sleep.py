"""Engine sleep and wake: token-identical output after a wake, memory really freed."""

from __future__ import annotations

import os

import pytest
import torch

from deploylab.engine.llm_engine import LLMEngine
from deploylab.engine.sampling_params import SamplingParams
from deploylab.errors import ConfigError, InvalidRequestError

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def _generate(engine: LLMEngine, rid: str, prompt: str | list[int] = PROMPT) -> list[int]:
    engine.add_request(rid, prompt, GREEDY)
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for delta in engine.step():
            tokens += delta.new_token_ids
    return tokens


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def real_engine() -> LLMEngine:
    return LLMEngine(kv_cache_gib=0.05, num_threads=1, max_num_seqs=4)


@pytest.mark.parametrize("level", [1, 2])
def test_real_model_token_identical_after_wake(real_engine: LLMEngine, level: int) -> None:
    before = _generate(real_engine, f"before-{level}")
    weights = real_engine.sleeper.weight_bytes()
    rss = _rss()
    report = real_engine.sleep(level)
    if level == 2:  # the memory really went back (a weight tensor kept alive would hold it)
        assert rss - _rss() > weights // 2
    assert real_engine.sleeper.is_sleeping
    assert real_engine.sleeper.weight_bytes() == 0  # storages really freed
    assert real_engine.sleeper.kv_bytes() == 0
    assert report.bytes_moved == (weights if level == 1 else 0)
    wake = real_engine.wake_up()
    assert wake.level == level and wake.bytes_moved >= weights
    assert real_engine.sleeper.weight_bytes() == weights
    after = _generate(real_engine, f"after-{level}")
    assert after == before
    assert real_engine.tokenizer.decode(after).startswith("The capital of France is Paris")


def test_random_weights_level2_redraws_same_weights() -> None:
    engine = LLMEngine(random_weights="tiny", seed=7, kv_cache_gib=0.01, num_threads=1)
    prompt = [5, 17, 33, 2 + 7, 100]
    before = _generate(engine, "a", prompt)
    engine.sleep(2)
    engine.wake_up()
    assert _generate(engine, "b", prompt) == before
    other = LLMEngine(random_weights="tiny", seed=8, kv_cache_gib=0.01, num_threads=1)
    assert _generate(other, "c", prompt) != before  # the seed picks the weights


def test_sleep_refuses_bad_level_and_busy_engine() -> None:
    engine = LLMEngine(random_weights="tiny", kv_cache_gib=0.01, num_threads=1)
    with pytest.raises(InvalidRequestError, match="level must be 1 or 2"):
        engine.sleep(3)
    engine.add_request("busy", [1, 2, 3], GREEDY)
    with pytest.raises(ConfigError, match="in flight"):
        engine.sleep(1)
    assert not engine.sleeper.is_sleeping
    assert torch.count_nonzero(engine.kv_cache.layers[0][0]) >= 0

"""A dropped engine is freed at once: no reference cycle holds its KV cache and weights
until a garbage collection (a second engine in the same process needs that memory)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from deploylab.engine import LLM, SamplingParams
from deploylab.engine.backref import EngineBackRef


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"async_scheduling": True},
        {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}},
    ],
    ids=["plain", "async", "ngram"],
)
def test_dropped_engine_is_freed_without_a_collection(extra: dict[str, Any]) -> None:
    llm = LLM(random_weights="tiny", device="cpu", max_num_seqs=4, max_model_len=128, **extra)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    assert len(llm.generate([[1, 2, 3, 4, 5, 1, 2, 3]], params)[0].token_ids) == 4
    ref = weakref.ref(llm.llm_engine)
    gc.disable()
    try:
        del llm
        assert ref() is None
    finally:
        gc.enable()


def test_back_reference_is_weak_and_says_when_its_engine_is_gone() -> None:
    class Owner:
        pass

    class Helper:
        engine = EngineBackRef()

    owner, helper = Owner(), Helper()
    helper.engine = owner
    assert helper.engine is owner
    del owner
    with pytest.raises(RuntimeError, match="was freed"):
        _ = helper.engine


def test_reset_prefix_cache_drops_cached_prompt_blocks() -> None:
    llm = LLM(random_weights="tiny", device="cpu", max_num_seqs=4, max_model_len=128)
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    llm.generate([list(range(1, 40))], params)
    manager = llm.llm_engine.block_manager
    assert manager.num_cached_blocks > 0
    assert llm.reset_prefix_cache() is True
    assert manager.num_cached_blocks == 0
    assert manager.num_free_blocks == manager.num_blocks

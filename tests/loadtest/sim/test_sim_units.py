"""The simulator's parts on their own: laws, token counting, prefix cache, residency, timer."""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

import pytest

from deploylab.loadtest.sim.config import ITLLaw, OutputLength, SimConfig, TTFTLaw, parse_config
from deploylab.loadtest.sim.law import PerformanceLaw
from deploylab.loadtest.sim.prefix_cache import PrefixCache
from deploylab.loadtest.sim.residency import ModelResidency
from deploylab.loadtest.sim.timer import PreciseTimer
from deploylab.loadtest.sim.tokens import block_hashes, render_chat, text_pieces


def law(output: OutputLength | None = None, **itl: Any) -> PerformanceLaw:
    ttft = TTFTLaw(
        base_ms=10, per_prompt_token_ms=0.1, per_cached_token_ms=0.01, per_running_request_ms=2
    )
    return PerformanceLaw(ttft, ITLLaw(**itl), output or OutputLength(), random.Random(0))


def test_ttft_and_itl_laws() -> None:
    p = law(base_ms=5, per_running_request_ms=0.5)
    assert p.ttft_s(1000, 200, 3) == pytest.approx((10 + 0.1 * 800 + 0.01 * 200 + 2 * 3) / 1e3)
    assert p.itl_s(0) == pytest.approx(0.005)
    assert p.itl_s(10) == pytest.approx(0.010)
    jittery = law(base_ms=10, jitter=0.2)
    gaps = [jittery.itl_s(0) for _ in range(2000)]
    assert 0.008 <= min(gaps) and max(gaps) <= 0.012
    assert statistics.mean(gaps) == pytest.approx(0.010, rel=0.02)


@pytest.mark.parametrize(
    ("dist", "mean", "std"),
    [("fixed", 50, 0), ("normal", 300, 40), ("lognormal", 200, 150), ("exponential", 100, 100)],
)
def test_output_length_distributions(dist: str, mean: float, std: float) -> None:
    p = law(OutputLength(distribution=dist, mean=mean, std=std, min=1, max=100_000))  # type: ignore[arg-type]
    draws = [p.sample_output_tokens() for _ in range(20_000)]
    assert statistics.mean(draws) == pytest.approx(mean, rel=0.03)
    assert statistics.pstdev(draws) == pytest.approx(std, rel=0.06, abs=0.6)
    bounded = law(OutputLength(distribution="uniform", min=5, max=9))
    assert {bounded.sample_output_tokens() for _ in range(500)} == {5, 6, 7, 8, 9}


def test_output_length_rules() -> None:
    p = law(OutputLength(distribution="fixed", mean=50))
    assert p.output_tokens(max_tokens=200, ignore_eos=True, min_tokens=0, room=1000) == (
        200,
        "length",
    )
    assert p.output_tokens(max_tokens=200, ignore_eos=False, min_tokens=0, room=1000) == (
        50,
        "stop",
    )
    assert p.output_tokens(max_tokens=20, ignore_eos=False, min_tokens=0, room=1000) == (
        20,
        "length",
    )
    assert p.output_tokens(max_tokens=None, ignore_eos=False, min_tokens=80, room=1000) == (
        80,
        "stop",
    )
    assert p.output_tokens(max_tokens=None, ignore_eos=False, min_tokens=0, room=30) == (
        30,
        "length",
    )


def test_token_counting_rule() -> None:
    assert len(text_pieces("hello world")) == 2  # common words: one token each
    assert len(text_pieces("  a  bb   ccc dddd ")) == 4
    assert len(text_pieces("")) == 0
    chat = render_chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert chat == "<|user|>\nhi\n<|assistant|>\n"


def test_prefix_blocks_and_lru_cache() -> None:
    a = block_hashes(list(range(64)), 16, "m")
    b = block_hashes([*range(40), *range(900, 924)], 16, "m")
    assert len(a) == 4 and a[:2] == b[:2] and a[2] != b[2]
    assert block_hashes(list(range(64)), 16, "other-model")[0] != a[0]
    cache = PrefixCache(capacity_blocks=5, block_size=16)
    assert cache.lookup(a, 64) == 0
    cache.insert(a)
    assert cache.lookup(a, 64) == 63  # never the whole prompt
    assert cache.lookup(b, 64) == 32
    cache.insert(b)  # 6 distinct blocks > 5: the least recently used one (a's third) goes
    assert cache.lookup(a, 64) == 32
    assert (cache.queries_tokens, cache.hits_tokens) == (256, 63 + 32 + 32)


def test_residency_waits_for_an_idle_model_to_evict() -> None:
    config = parse_config(
        "models:\n  - {name: a}\n  - {name: b, load_ms: 10, preload: false}\n"
        "residency: {max_models: 1}\n"
    )
    scheduled: list[tuple[float, Any, Any]] = []
    residency = ModelResidency(config, lambda when, cb, arg: scheduled.append((when, cb, arg)))
    ready: list[str] = []
    residency.acquire("a", ready.append, "a1", 1.0)
    residency.acquire("b", ready.append, "b1", 2.0)
    assert ready == ["a1"] and scheduled == []  # a is busy, so b's load cannot start
    residency.release("a", 5.0)
    # b's 10 ms load starts when a became idle, at 5.0 s.
    assert len(scheduled) == 1 and scheduled[0][0] == pytest.approx(5.010)
    when, callback, arg = scheduled[0]
    callback(arg)
    assert ready == ["a1", "b1"] and residency.resident() == ["b"]
    assert residency.ready_at("b") == pytest.approx(5.010)
    assert not residency.is_resident("a")


async def test_precise_timer_orders_and_cancels() -> None:
    loop = asyncio.get_running_loop()
    timer = PreciseTimer(loop)
    fired: list[str] = []
    done = loop.create_future()
    now = loop.time()
    timer.call_at(now + 0.03, fired.append, "late")
    timer.call_at(now + 0.01, fired.append, "early")
    cancelled = timer.call_at(now + 0.02, fired.append, "cancelled")
    timer.call_at(now + 0.04, lambda _: done.set_result(None), None)
    PreciseTimer.cancel(cancelled)
    await asyncio.wait_for(done, 2)
    timer.close()
    assert fired == ["early", "late"]
    assert SimConfig().precise_timer

"""The simulator follows its performance model. Each test checks the law on the simulator's own
schedule (its intended times, exact) and that a plain HTTP client on loopback never sees a
token before its scheduled time; how much later it arrives depends on how busy the machine
is, which is a benchmark's business (benchmarks/loadgen_accuracy.py), never a test's."""

from __future__ import annotations

import asyncio

import aiohttp
from simhelpers import exactly, gaps, ids, never_early, run_sim, send, ttft_law

LAW = """
ttft: {base_ms: 30, per_prompt_token_ms: 0.05, per_cached_token_ms: 0.01}
itl: {base_ms: 15}
prefix_cache: {enabled: true, block_size: 16}
"""


def stream_body(prompt: list[int], tokens: int) -> dict[str, object]:
    return {"prompt": prompt, "max_tokens": tokens, "ignore_eos": True, "stream": True}


async def test_ttft_follows_prompt_length_and_itl_is_constant() -> None:
    with run_sim(LAW) as sim:
        async with aiohttp.ClientSession() as s:
            short = [await send(s, sim.url, stream_body(ids(100, 10**4 * i), 6)) for i in range(3)]
            long = [
                await send(s, sim.url, stream_body(ids(2000, 10**5 * (i + 1)), 2)) for i in range(3)
            ]
        plans = sim.schedule()
    assert [p.prompt_tokens for p in plans] == [100] * 3 + [2000] * 3
    for plan, seen in zip(plans, short + long, strict=True):
        assert plan.cached == 0 and plan.admitted_at == plan.arrival  # nothing else running
        assert exactly(ttft_law(plan), 0.030 + 0.05e-3 * plan.prompt_tokens)
        assert all(exactly(g, 0.015) for g in gaps(plan))
        assert never_early(seen.ttft_s, ttft_law(plan))
        assert len(seen.gaps_s) == len(gaps(plan))
    assert sum(len(gaps(p)) for p in plans[:3]) == 15


async def test_cached_prefix_costs_only_the_cached_rate() -> None:
    cold_ms = 30 + 0.05 * 1600
    warm_ms = 30 + 0.05 * 1 + 0.01 * 1599  # the last prompt token is always computed
    with run_sim(LAW) as sim:
        async with aiohttp.ClientSession() as s:
            cold = [await send(s, sim.url, stream_body(ids(1600, 10**5 * i), 1)) for i in range(3)]
            warm = [await send(s, sim.url, stream_body(ids(1600, 10**5 * i), 1)) for i in range(3)]
            async with s.post(sim.url + "/reset_prefix_cache") as resp:
                assert resp.status == 200
            again = [await send(s, sim.url, stream_body(ids(1600, 10**5 * i), 1)) for i in range(3)]
            body = {"prompt": ids(1600, 0), "max_tokens": 1, "stream": True}
            body["stream_options"] = {"include_usage": True}
            usage = await send(s, sim.url, body)
        plans = sim.schedule()
    expected = [cold_ms] * 3 + [warm_ms] * 3 + [cold_ms] * 3
    for plan, seen, ms in zip(plans, cold + warm + again, expected, strict=False):
        assert exactly(ttft_law(plan), ms / 1e3)
        assert never_early(seen.ttft_s, ttft_law(plan))
    assert [p.cached for p in plans[:9]] == [0] * 3 + [1599] * 3 + [0] * 3
    assert b'"prompt_tokens":1600,' in usage.events[-2]
    assert b'"cached_tokens":1599' in usage.events[-2]


async def test_batch_size_slows_first_token_and_decode() -> None:
    yaml = """
ttft: {base_ms: 20, per_running_request_ms: 25}
itl: {base_ms: 10, per_running_request_ms: 6}
"""
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            alone = await send(s, sim.url, stream_body(ids(10), 8))
            rounds = [
                await asyncio.gather(
                    *(send(s, sim.url, stream_body(ids(10, 100 * i), 30)) for i in range(4))
                )
                for _ in range(2)
            ]
        plans = sim.schedule()
    assert all(exactly(g, 0.010) for g in gaps(plans[0]))  # alone: no batch term
    assert never_early(alone.ttft_s, ttft_law(plans[0]))
    for plan in plans[1:]:
        # admitted with k others running: TTFT 20 + 25k ms after admission
        assert exactly(plan.token_due[0] - plan.admitted_at, 0.020 + 0.025 * plan.others)
        # each gap follows the batch at the time it was scheduled: 10 + 6 x others
        for gap, others in zip(gaps(plan), plan.token_others, strict=False):
            assert exactly(gap, 0.010 + 0.006 * others)
    # the rounds really batched: someone found all three others running, and decoded beside
    # them (a gap of 10 + 6 x 3 = 28 ms)
    assert max(p.others for p in plans[1:]) == 3
    assert any(exactly(g, 0.028) for p in plans[1:] for g in gaps(p))
    seen = [r for round_ in rounds for r in round_]
    assert min(r.ttft_s for r in seen) >= 0.020 - 0.001

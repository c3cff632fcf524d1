"""The simulator follows its performance model, measured by a plain HTTP client on loopback."""

from __future__ import annotations

import asyncio
import statistics

import aiohttp
from simhelpers import ids, near, run_sim, send

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
    assert near(min(r.ttft_s for r in short), 0.030 + 0.05e-3 * 100)
    assert near(min(r.ttft_s for r in long), 0.030 + 0.05e-3 * 2000)
    gaps = [g for r in short for g in r.gaps_s]
    assert len(gaps) == 15
    assert near(statistics.median(gaps), 0.015)


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
    assert near(min(r.ttft_s for r in cold), cold_ms / 1e3)
    assert near(min(r.ttft_s for r in warm), warm_ms / 1e3)
    assert near(min(r.ttft_s for r in again), cold_ms / 1e3)
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
    batch = rounds[0] + rounds[1]
    ranked = zip(*(sorted(r.ttft_s for r in round_) for round_ in rounds), strict=True)
    assert near(statistics.median(alone.gaps_s), 0.010)
    # The k-th admitted request finds k others running: 20 + 25k ms.
    for k, ttfts in enumerate(ranked):
        assert near(min(ttfts), 0.020 + 0.025 * k)
    # Once all four decode, each gap is 10 + 6 * 3 others = 28 ms.
    steady = [g for r in batch for g in r.gaps_s[10:20]]
    assert near(statistics.median(steady), 0.028)

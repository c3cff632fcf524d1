"""Injected faults happen at their configured rates, and look like what they simulate."""

from __future__ import annotations

import asyncio
import math

import aiohttp
from simhelpers import ids, run_sim, send


def within(count: int, n: int, rate: float) -> bool:
    """`count` successes of `n` is within 4.5 binomial standard deviations of n * rate."""
    return abs(count - n * rate) <= 4.5 * math.sqrt(n * rate * (1 - rate)) + 1


def body(tokens: int = 1, stream: bool = True) -> dict[str, object]:
    return {"prompt": ids(8), "max_tokens": tokens, "ignore_eos": True, "stream": stream}


async def test_error_statuses_at_configured_rates() -> None:
    yaml = "ttft: {base_ms: 0}\nfaults:\n  errors: {503: 0.2, 429: 0.1, 500: 0.05}\n"
    n = 400
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(
                *(send(s, sim.url, body(stream=False)) for _ in range(n))
            )
            stats = sim.stats()
    statuses = [r.status for r in results]
    for status, rate in ((503, 0.2), (429, 0.1), (500, 0.05)):
        assert within(statuses.count(status), n, rate), (status, statuses.count(status))
        assert stats["faults"]["errors_by_status"][str(status)] == statuses.count(status)
    assert (
        statuses.count(200) + statuses.count(503) + statuses.count(429) + statuses.count(500) == n
    )
    failed = next(r for r in results if r.status == 503)
    assert failed.body["error"]["code"] == 503 and "simulated" in failed.body["error"]["message"]


async def test_stalls_pause_the_stream_after_the_configured_token() -> None:
    yaml = """
ttft: {base_ms: 5}
itl: {base_ms: 2}
faults:
  stall: {rate: 0.5, after_tokens: 3, duration_ms: 300}
"""
    n = 60
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(send(s, sim.url, body(tokens=6)) for _ in range(n)))
    stalled = [r for r in results if max(r.gaps_s) >= 0.2]
    assert within(len(stalled), n, 0.5)
    for r in stalled:  # the pause sits between token 3 and token 4, and the stream completes
        assert r.gaps_s.index(max(r.gaps_s)) == 2
        assert r.events[-1] == b"[DONE]" and len(r.gaps_s) == 5


async def test_dropped_connections_cut_the_stream() -> None:
    yaml = "ttft: {base_ms: 2}\nitl: {base_ms: 1}\nfaults:\n  drop: {rate: 0.3, after_tokens: 2}\n"
    n = 80
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(send(s, sim.url, body(tokens=5)) for _ in range(n)))
            stats = sim.stats()
    dropped = [r for r in results if r.error is not None]
    assert within(len(dropped), n, 0.3)
    assert all(len(r.events) == 2 and b"[DONE]" not in r.events for r in dropped)
    assert stats["faults"]["drop"] == len(dropped)
    # The connections that were not dropped (including reused ones) complete normally.
    assert all(r.events[-1] == b"[DONE]" for r in results if r.error is None)


async def test_slow_first_byte_delays_the_response_headers() -> None:
    yaml = "ttft: {base_ms: 5}\nfaults:\n  slow_first_byte: {rate: 0.4, delay_ms: 100}\n"
    n = 60
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(send(s, sim.url, body()) for _ in range(n)))
    slow = [r for r in results if r.headers_s >= 0.100]
    assert within(len(slow), n, 0.4)
    assert all(r.ttft_s >= 0.105 for r in slow)

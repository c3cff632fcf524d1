"""KV capacity makes requests queue; cold models and adapters pay their load delay, warm don't."""

from __future__ import annotations

import asyncio

import aiohttp
from simhelpers import ids, near, run_sim, send


def body(model: str | None = None, tokens: int = 1, prompt: int = 10) -> dict[str, object]:
    out: dict[str, object] = {
        "prompt": ids(prompt),
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    if model is not None:
        out["model"] = model
    return out


async def test_kv_capacity_makes_requests_wait_for_each_other() -> None:
    # Each request reserves 100 prompt + 50 output = 150 tokens; 200 fit only one at a time.
    yaml = """
engine: {kv_capacity_tokens: 200}
ttft: {base_ms: 20}
itl: {base_ms: 4}
prefix_cache: {enabled: false}
"""
    rounds, snapshots = [], []
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                tasks = [
                    asyncio.create_task(send(s, sim.url, body(tokens=50, prompt=100)))
                    for _ in range(3)
                ]
                for _ in range(20):  # until all three have arrived
                    await asyncio.sleep(0.01)
                    async with s.get(sim.url + "/metrics") as resp:
                        metrics = await resp.text()
                    if 'waiting{model_name="sim-model"} 2.0' in metrics:
                        break
                snapshots.append(metrics)
                rounds.append(sorted(r.ttft_s for r in await asyncio.gather(*tasks)))
    service = 0.020 + 49 * 0.004  # one request's time from admission to its last token
    for k, ttfts in enumerate(zip(*rounds, strict=True)):
        assert near(min(ttfts), 0.020 + k * service)
    metrics = snapshots[0]
    assert 'vllm:num_requests_running{model_name="sim-model"} 1.0' in metrics
    assert 'vllm:num_requests_waiting{model_name="sim-model"} 2.0' in metrics
    assert "vllm:kv_cache_usage_perc 0.75" in metrics


async def test_max_running_bounds_the_batch() -> None:
    yaml = "engine: {max_running: 2}\nttft: {base_ms: 40}\nitl: {base_ms: 1}\n"
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            rounds = [
                sorted(
                    r.ttft_s
                    for r in await asyncio.gather(*(send(s, sim.url, body()) for _ in range(4)))
                )
                for _ in range(2)
            ]
    best = [min(ttfts) for ttfts in zip(*rounds, strict=True)]
    assert near(best[1], 0.040) and near(best[2], 0.080) and near(best[3], 0.080)


async def test_cold_model_pays_load_delay_once_and_lru_eviction_makes_it_cold_again() -> None:
    yaml = """
ttft: {base_ms: 10}
models:
  - {name: first, load_ms: 60, preload: true}
  - {name: second, load_ms: 150, preload: false}
  - {name: third, load_ms: 100, preload: false}
residency: {max_models: 2}
"""
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            warm_first = await send(s, sim.url, body("first"))
            # Two concurrent first requests to a cold model share one load.
            cold = await asyncio.gather(
                send(s, sim.url, body("second")), send(s, sim.url, body("second"))
            )
            warm = [await send(s, sim.url, body("second")) for _ in range(3)]
            # Loading `third` evicts the least recently used model, `first`.
            third = await send(s, sim.url, body("third"))
            first_again = await send(s, sim.url, body("first"))
            stats = sim.stats()
    assert near(warm_first.ttft_s, 0.010)
    assert near(min(r.ttft_s for r in cold), 0.150 + 0.010)
    assert max(r.ttft_s for r in cold) < 0.150 + 0.010 + 0.1  # one shared load, not two
    assert near(min(r.ttft_s for r in warm), 0.010)
    assert near(third.ttft_s, 0.100 + 0.010)
    assert near(first_again.ttft_s, 0.060 + 0.010)  # evicted, so cold again
    assert stats["models"]["loads"] == {"first": 1, "second": 1, "third": 1}
    assert stats["models"]["resident"] == ["third", "first"]
    assert stats["models"]["evictions"] == 2


async def test_busy_model_is_not_evicted_until_idle() -> None:
    yaml = """
ttft: {base_ms: 5}
itl: {base_ms: 10}
models:
  - {name: a, preload: true}
  - {name: b, load_ms: 50, preload: false}
residency: {max_models: 1}
"""
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            long_a = asyncio.create_task(send(s, sim.url, body("a", tokens=20)))
            await asyncio.sleep(0.02)
            b = await send(s, sim.url, body("b"))
            a = await long_a
    a_done = a.started + a.event_s[-1]
    # `b` had to wait for `a` (about 5 + 19 * 10 ms) before its 50 ms load could start.
    assert b.started + b.ttft_s >= a_done + 0.050 - 0.002


async def test_lora_adapter_cold_load() -> None:
    yaml = """
ttft: {base_ms: 10}
models: [{name: base}]
adapters:
  - {name: sql, base: base, load_ms: 80, count: 3}
residency: {max_adapters: 2}
"""
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            async with s.get(sim.url + "/v1/models") as resp:
                models = await resp.json()
            first = await send(s, sim.url, body("sql-1"))
            second = await send(s, sim.url, body("sql-1"))
            base = await send(s, sim.url, body("base"))
    names = {m["id"]: m for m in models["data"]}
    assert set(names) == {"base", "sql-0", "sql-1", "sql-2"}
    assert names["sql-1"]["parent"] == "base" and names["base"]["parent"] is None
    assert near(first.ttft_s, 0.090)
    assert near(second.ttft_s, 0.010)
    assert near(base.ttft_s, 0.010)

"""KV capacity makes requests queue; cold models and adapters pay their load delay, warm don't."""

from __future__ import annotations

import asyncio

import aiohttp
from simhelpers import exactly, ids, never_early, run_sim, send, ttft_law


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
                rounds.append(await asyncio.gather(*tasks))
        plans = sim.schedule()
    # one at a time: each is admitted at the intended last token of the one before it
    for before, after in [(plans[0], plans[1]), (plans[1], plans[2]), (plans[3], plans[4])]:
        assert after.admitted_at == before.token_due[-1]
        assert after.admitted_at > after.arrival  # it waited for KV space
    for plan in plans:
        assert exactly(plan.token_due[0] - plan.admitted_at, 0.020) and plan.others == 0
        assert exactly(plan.token_due[-1] - plan.token_due[0], 49 * 0.004)
    by_rid = {p.rid: p for p in plans}
    assert len(by_rid) == 6 and all(r.status == 200 for round_ in rounds for r in round_)
    metrics = snapshots[0]
    assert 'vllm:num_requests_running{model_name="sim-model"} 1.0' in metrics
    assert 'vllm:num_requests_waiting{model_name="sim-model"} 2.0' in metrics
    assert "vllm:kv_cache_usage_perc 0.75" in metrics


async def test_max_running_bounds_the_batch() -> None:
    yaml = "engine: {max_running: 2}\nttft: {base_ms: 40}\nitl: {base_ms: 1}\n"
    with run_sim(yaml) as sim:
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                await asyncio.gather(*(send(s, sim.url, body()) for _ in range(4)))
        plans = sim.schedule()
    for round_ in (plans[:4], plans[4:]):
        # two run at once; each of the other two starts when a running one finishes
        assert [p.others for p in round_] == [0, 1, 1, 1]
        assert round_[2].admitted_at == min(p.token_due[-1] for p in round_[:2])
        assert round_[3].admitted_at == max(p.token_due[-1] for p in round_[:2])
        assert all(exactly(p.token_due[0] - p.admitted_at, 0.040) for p in round_)


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
        plans = sim.schedule()
    seen = [warm_first, *cold, *warm, third, first_again]
    loads = [0, 150, 150, 0, 0, 0, 100, 60]  # ms of model load each request waited for
    for plan, client, load_ms in zip(plans, seen, loads, strict=True):
        assert never_early(client.ttft_s, ttft_law(plan))
        assert exactly(plan.token_due[0] - plan.admitted_at, 0.010)
        if load_ms == 0:  # warm: admitted as it arrived
            assert plan.admitted_at == plan.arrival
    # the two cold requests share one load: both admitted when it ends, 150 ms after the first
    assert plans[1].admitted_at == plans[2].admitted_at
    assert exactly(plans[1].admitted_at - min(plans[1].arrival, plans[2].arrival), 0.150)
    assert exactly(plans[6].admitted_at - plans[6].arrival, 0.100)
    assert exactly(plans[7].admitted_at - plans[7].arrival, 0.060)  # evicted, so cold again
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
        plan_a, plan_b = sim.schedule()
    # `b` had to wait for `a`'s last token before its 50 ms load could start
    assert exactly(plan_b.admitted_at, plan_a.token_due[-1] + 0.050)
    assert never_early(b.started + b.ttft_s, a.started + a.event_s[-1])


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
        plans = sim.schedule()
    names = {m["id"]: m for m in models["data"]}
    assert set(names) == {"base", "sql-0", "sql-1", "sql-2"}
    assert names["sql-1"]["parent"] == "base" and names["base"]["parent"] is None
    for plan, client, ms in zip(plans, (first, second, base), (90, 10, 10), strict=True):
        assert exactly(ttft_law(plan), ms / 1e3)  # the adapter's 80 ms load, once
        assert never_early(client.ttft_s, ttft_law(plan))

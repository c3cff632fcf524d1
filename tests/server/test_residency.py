"""The residency manager with real engines (tiny random-weight models, distinct seeds, so
every model answers differently): routing, the budget, waits, in-flight protection."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from deploylab.engine.config import EngineConfig
from deploylab.engine.llm_engine import LLMEngine
from deploylab.engine.sampling_params import SamplingParams
from deploylab.server.model_set import ModelEntry, build_manager
from deploylab.server.residency import RESIDENT, WAKING, ResidencyManager, ServedModel

BASE = EngineConfig(kv_cache_gib=0.01, num_threads=1, max_num_seqs=8, max_num_batched_tokens=256)
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8], [100, 3, 44], [9] * 12, [300, 301, 302, 303, 304]]


def _manager(
    n: int, budget_models: float | None, level: int = 1, fixed: bool = False
) -> ResidencyManager:
    entries = [ModelEntry(name=f"m{i}", random_weights="tiny", seed=i + 1) for i in range(n)]
    base = replace(BASE, enable_sleep_mode=fixed)  # fixed: weights and KV at fixed addresses
    probe = build_manager(entries[:1], base, None, None, level)
    footprint = probe.default.footprint
    probe.shutdown()
    budget = None if budget_models is None else int(footprint * budget_models)
    return build_manager(entries, base, budget, None, level)


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, int], list[int]]:
    """Each model's greedy tokens for each prompt, from a fresh engine of its own."""
    out = {}
    for i in range(4):
        engine = LLMEngine(BASE, random_weights="tiny", seed=i + 1)
        for k, prompt in enumerate(PROMPTS):
            engine.add_request(f"r{k}", prompt, GREEDY)
            tokens: list[int] = []
            while engine.has_unfinished_requests():
                for delta in engine.step():
                    tokens += delta.new_token_ids
            out[(f"m{i}", k)] = tokens
    return out


async def _ask(manager: ResidencyManager, name: str, k: int) -> list[int]:
    served = manager.resolve(name)
    async with manager.use(served):
        assert served.state == RESIDENT
        if manager.budget_bytes is not None:
            assert manager.resident_bytes() <= manager.budget_bytes
        tokens: list[int] = []
        async for delta in served.engine.generate(PROMPTS[k], GREEDY):
            tokens += delta.new_token_ids
        return tokens


def _held_bytes(m: ServedModel) -> int:
    sleeper = m.engine.engine.sleeper
    return int(sleeper.weight_bytes() + sleeper.kv_bytes() + sleeper.host_bytes())


@pytest.fixture
def managers() -> Iterator[list[ResidencyManager]]:
    made: list[ResidencyManager] = []
    yield made
    for m in made:
        m.shutdown()


def test_models_sleep_at_start_when_over_budget(managers: list[ResidencyManager]) -> None:
    manager = _manager(4, 2.5)
    managers.append(manager)
    states = [m.state for m in manager.models.values()]
    assert states == ["resident", "resident", "sleeping", "sleeping"]
    assert [c["state"] for c in manager.cards()] == states


@pytest.mark.parametrize(("level", "fixed"), [(1, False), (2, False), (1, True)])
def test_random_traffic_more_models_than_budget(
    level: int,
    fixed: bool,
    reference: dict[tuple[str, int], list[int]],
    managers: list[ResidencyManager],
) -> None:
    manager = _manager(4, 2.5, level, fixed)
    managers.append(manager)
    assert all(m.engine.engine.sleeper.fixed_addresses == fixed for m in manager.models.values())
    weights = {m.name: m.weight_bytes for m in manager.models.values()}
    rng = random.Random(level)
    plan = [
        [(f"m{rng.randrange(4)}", rng.randrange(len(PROMPTS))) for _ in range(8)] for _ in range(5)
    ]

    async def client(requests: list[tuple[str, int]]) -> list[bool]:
        return [await _ask(manager, name, k) == reference[(name, k)] for name, k in requests]

    async def run() -> list[list[bool]]:
        return await asyncio.gather(*(client(p) for p in plan))

    results = asyncio.run(run())
    assert all(all(r) for r in results)  # every answer is the named model's own
    assert sum(1 for m in manager.models.values() if m.state == RESIDENT) <= 2
    wakes = sum(manager.metrics.wakes.labels(n, str(level))._value.get() for n in weights)
    assert wakes >= 1  # the traffic did push models out and bring them back
    for m in manager.models.values():  # nothing leaked: each holds exactly what its state says
        expected = {"resident": m.footprint, "sleeping": weights[m.name], "unloaded": 0}
        assert _held_bytes(m) == expected[m.state], m.name
        assert m.in_flight == 0


def test_resident_model_does_not_wait_for_another_wake(managers: list[ResidencyManager]) -> None:
    manager = _manager(3, 2.5)
    managers.append(manager)
    gate = threading.Event()
    sleeping = manager.resolve("m2")
    assert sleeping.state == "sleeping"
    blocker = sleeping.engine.call(lambda e: gate.wait(60))  # m2's wake queues behind this

    async def run() -> None:
        wake = asyncio.ensure_future(_ask(manager, "m2", 0))
        await asyncio.sleep(0.05)
        assert sleeping.state == WAKING
        # m0 is resident: its request completes while m2's wake cannot finish
        await _ask(manager, "m0", 1)
        assert not wake.done() and sleeping.state == WAKING
        gate.set()
        await wake

    asyncio.run(run())
    blocker.result()
    assert sleeping.state == RESIDENT


def test_model_in_flight_is_never_put_to_sleep(managers: list[ResidencyManager]) -> None:
    manager = _manager(2, 1.5)
    managers.append(manager)
    busy, other = manager.resolve("m0"), manager.resolve("m1")

    async def run() -> None:
        release = asyncio.Event()

        async def hold() -> None:
            async with manager.use(busy):
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(_ask(manager, "m1", 0))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert busy.state == RESIDENT and not waiter.done()  # m1 waits: m0 is busy
        release.set()
        await holder
        await waiter
        assert busy.state == "sleeping" and other.state == RESIDENT

    asyncio.run(run())


def test_keep_alive_sleeps_idle_models_only(managers: list[ResidencyManager]) -> None:
    manager = _manager(2, None)
    managers.append(manager)
    now = [0.0]
    manager.clock = lambda: now[0]
    manager.keep_alive = 10.0
    for m in manager.models.values():
        m.last_used = 0.0

    async def run() -> None:
        now[0] = 5.0
        assert await manager.sleep_idle() == []
        async with manager.use(manager.resolve("m1")):
            now[0] = 20.0
            assert await manager.sleep_idle() == ["m0"]  # m1 has a request in flight
        assert await manager.sleep_idle() == []  # m1 was just used (at 20)
        now[0] = 31.0
        assert await manager.sleep_idle() == ["m1"]

    asyncio.run(run())


def test_keep_alive_task_runs_on_its_own(managers: list[ResidencyManager]) -> None:
    manager = _manager(2, None)
    managers.append(manager)
    manager.keep_alive = 0.1

    async def run() -> None:
        manager.start()
        for _ in range(1200):  # until it happens (no timing is asserted)
            if all(m.state != RESIDENT for m in manager.models.values()):
                break
            await asyncio.sleep(0.05)
        assert [m.state for m in manager.models.values()] == ["sleeping", "sleeping"]
        assert await _ask(manager, "m1", 0)  # a request still wakes it

    asyncio.run(run())

"""The pacer lets the event loop poll its sockets between slices of bookkeeping."""

from __future__ import annotations

import asyncio
import time

from deploylab.loadtest.pacing import Pacer


async def test_work_past_the_budget_waits_for_the_next_loop_iteration() -> None:
    loop = asyncio.get_running_loop()
    iteration = [0]

    def tick() -> None:  # runs once per loop iteration
        iteration[0] += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    await asyncio.sleep(0)
    pacer = Pacer(budget_ns=1_000_000)
    ran_in: list[int] = []

    async def unit(spin_s: float) -> None:
        await pacer.turn()
        ran_in.append(iteration[0])
        end = time.perf_counter() + spin_s
        while time.perf_counter() < end:
            pass

    # units longer than the budget: one per iteration
    await asyncio.gather(*(unit(0.002) for _ in range(8)))
    assert len(set(ran_in)) == 8
    # short units share an iteration until the budget is spent
    ran_in.clear()
    await asyncio.gather(*(unit(0.0) for _ in range(8)))
    assert len(set(ran_in)) == 1

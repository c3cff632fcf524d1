"""Adapter memory and isolation: prefix-cache keys per adapter, slot LRU under traffic."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from deploylab.engine import SamplingParams
from deploylab.engine.models.hf_interop import transformers_twin

from .conftest import SPECS, AdapterSpec, greedy, save_adapter

N_NEW = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=N_NEW, ignore_eos=True)


def test_prefix_cache_is_keyed_by_adapter(tiny: Any, tmp_path: Path) -> None:
    paths = {s.name: str(save_adapter(tiny.model, s, tmp_path)[0]) for s in SPECS[:2]}
    llm = tiny.llm(lora_modules=paths, max_loras=2)
    prompt = list(range(10, 58))  # three full blocks of 16
    order: list[str | None] = ["a8", "b4", None, "a8", None, "b4"]
    cached = []
    tokens: dict[str | None, list[list[int]]] = {}
    for name in order:
        (out,) = llm.generate([prompt], GREEDY, lora=name)
        cached.append(out.num_cached_tokens)
        tokens.setdefault(name, []).append(out.token_ids)
    # Only a repeat under the same adapter (or base) hits the cache.
    assert cached == [0, 0, 0, 32, 32, 32]
    assert all(a == b for a, b in tokens.values())
    assert len({tuple(t[0]) for t in tokens.values()}) == 3
    llm.llm_engine.block_manager.check_invariants()


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])
def test_lru_slots_under_random_traffic(tiny: Any, tmp_path: Path, overlap: bool) -> None:
    """Six adapters, two device slots, three host copies: every answer is its own adapter's
    (also with async scheduling, where slots turn over one step behind the device)."""
    targets = ("q_proj", "v_proj", "down_proj", "up_proj")
    specs = [
        AdapterSpec(f"z{i}", 2 + 2 * (i % 3), 8, targets[: 1 + i % 4], seed=10 + i)
        for i in range(6)
    ]
    paths, models = {}, {}
    for spec in specs:
        path, pm = save_adapter(tiny.model, spec, tmp_path)
        paths[spec.name], models[spec.name] = str(path), pm
    models[None] = transformers_twin(tiny.model)
    rng = random.Random(5)
    names: list[str | None] = [rng.choice([*paths, None]) for _ in range(24)]
    prompts = [[rng.randrange(3, 512) for _ in range(rng.randrange(4, 20))] for _ in names]
    llm = tiny.llm(
        lora_modules=paths, max_loras=2, max_cpu_loras=3, max_num_seqs=6,
        async_scheduling=overlap,
    )  # fmt: skip
    assert (llm.llm_engine.overlap is not None) is overlap
    outs = llm.generate(prompts, GREEDY, lora=names)
    expected = [greedy(models[n], p, N_NEW) for p, n in zip(prompts, names, strict=True)]
    assert [o.token_ids for o in outs] == expected
    engine = llm.llm_engine
    assert engine.lora is not None
    stats = engine.lora.stats
    assert stats.evictions > 0 and stats.host_evictions > 0 and stats.host_loads > 6
    assert engine.stats().lora_loads_total == stats.loads
    bm = engine.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks  # no block leaked
    assert len(engine.lora._slot_of) <= 2 and len(engine.lora._host) <= 3


def test_slots_limit_distinct_adapters_per_step(tiny: Any, tmp_path: Path) -> None:
    paths = {s.name: str(save_adapter(tiny.model, s, tmp_path)[0]) for s in SPECS}
    engine = tiny.engine(lora_modules=paths, max_loras=2)
    for i, name in enumerate(["a8", "b4", "c16", None]):
        engine.add_request(f"r{i}", [5, 6, 7, 8], GREEDY, lora_name=name)
    engine.step()
    running = {s.lora_name for s in engine.scheduler.running}
    assert running == {"a8", "b4", None}  # c16 waits for a slot; the base request goes ahead
    assert engine.stats().lora_waiting == ("c16",)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.lora is not None and engine.lora.stats.evictions == 1


def test_unload_and_reload_is_a_new_adapter(tiny: Any, tmp_path: Path) -> None:
    path = str(save_adapter(tiny.model, SPECS[0], tmp_path)[0])
    other = str(save_adapter(tiny.model, SPECS[1], tmp_path)[0])
    llm = tiny.llm(enable_lora=True, max_loras=1)
    engine = llm.llm_engine
    engine.add_lora("x", path)
    prompt = list(range(10, 58))
    (first,) = llm.generate([prompt], GREEDY, lora="x")
    engine.remove_lora("x")
    engine.add_lora("x", other)  # same name, other weights: no stale cache or slot
    (second,) = llm.generate([prompt], GREEDY, lora="x")
    assert second.num_cached_tokens == 0
    pm = save_adapter(tiny.model, SPECS[1], tmp_path / "ref")[1]
    assert second.token_ids == greedy(pm, prompt, N_NEW) != first.token_ids


def test_config_errors(tiny: Any) -> None:
    from deploylab.errors import ConfigError

    with pytest.raises(ConfigError, match="max_cpu_loras"):
        tiny.engine(enable_lora=True, max_loras=4, max_cpu_loras=2)
    with pytest.raises(ConfigError, match="max_lora_rank"):
        tiny.engine(enable_lora=True, max_lora_rank=0)


def test_decode_graph_lora_input_orders_every_row() -> None:
    """The static LoRA input of a captured decode graph is the rows' slots, then a permutation
    of the rows sorted by slot, also for base-model rows only (the capture's input: the
    kernels load each program's rows through the order, and an order of -1 read outside x
    and crashed the CUDA context)."""
    from deploylab.engine.lora.ops import slots_and_order

    assert slots_and_order([-1] * 4) == [-1] * 4 + [0, 1, 2, 3]
    row_slots = [2, -1, 0, 2, -1]
    packed = slots_and_order(row_slots)
    assert packed[:5] == row_slots
    order = packed[5:]
    assert sorted(order) == list(range(5))
    assert [row_slots[i] for i in order] == sorted(row_slots)

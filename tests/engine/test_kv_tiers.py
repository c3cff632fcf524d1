"""KV cache tiers with the real SmolLM2 model and a deliberately tiny device cache: evicted
prefix blocks come back from the host tier (and the disk tier) and the outputs do not change;
a damaged or unwritable disk tier costs a recompute, never a wrong answer or a crash."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from deploylab.engine import LLM, SamplingParams
from deploylab.engine.kv_cache import bytes_per_block
from deploylab.engine.kv_tiers import disk as disk_module
from deploylab.engine.outputs import EngineStats

from .conftest import ModelParts

GIB = 1024**3
STORIES = [
    "Tell me a story about a lighthouse keeper who finds a message in a bottle. " * 4,
    "Explain how a steam engine works to a child, step by step, with an example. " * 4,
    "Describe a walk through a market in Marrakesh: the smells, colours and sounds. " * 4,
]


def _blocks(smol: ModelParts, n: int) -> float:
    """GiB of `n` KV blocks of the model (float32, 16 tokens)."""
    import torch

    return n * bytes_per_block(smol.model.config, 16, torch.float32) / GIB


def _llm(smol: ModelParts, device_blocks: int = 9, **tiers: Any) -> LLM:
    # 9 blocks (8 usable): a device cache that holds one conversation (5 blocks), not three.
    return smol.llm(kv_cache_gib=_blocks(smol, device_blocks), max_num_seqs=4, **tiers)


def converse(llm: LLM, params: SamplingParams, rounds: int = 2) -> list[list[int]]:
    """Three conversations, one turn of each at a time: every returning turn's prompt is the
    last prompt, the answer and a new user message, so its prefix was evicted meanwhile."""
    tok = llm.tokenizer
    prompts = [tok.encode(s) for s in STORIES]
    outputs = []
    for r in range(rounds):
        for i, prompt in enumerate(prompts):
            out = llm.generate([prompt], params)[0]
            outputs.append(out.token_ids)
            prompts[i] = prompt + out.token_ids + tok.encode(f" And then, part {r + 2}?")
    return outputs


def check_no_leaks(llm: LLM) -> EngineStats:
    """Block-manager invariants hold, no block is in use, the host pool's slots add up."""
    engine = llm.llm_engine
    engine.block_manager.check_invariants()
    assert engine.block_manager.usage == 0.0
    tiers = engine.kv_tiers
    assert tiers is not None
    host = tiers.host
    assert len(host.entries) + len(host._free) == host.capacity
    assert len({e.slot for e in host.entries.values()} | set(host._free)) == host.capacity
    assert not host.pinned and not tiers._loads and not tiers._offloads
    return engine.stats()


GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=4, seed=1234)


@pytest.fixture(scope="module")
def resident(smol: ModelParts) -> dict[str, Any]:
    """Outputs with a device cache that holds everything (the reference), greedy and seeded,
    and the prompt tokens that cache served."""
    llm = smol.llm(kv_cache_gib=_blocks(smol, 200), max_num_seqs=4)
    greedy = converse(llm, GREEDY)
    hits = llm.llm_engine.stats().prefix_cache_hits
    return {"greedy": greedy, "seeded": converse(llm, SEEDED), "hits": hits}


@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_host_tier_outputs_match_off_and_resident(
    smol: ModelParts, resident: dict[str, Any], kind: str
) -> None:
    params = GREEDY if kind == "greedy" else SEEDED
    if kind == "greedy":  # seeded: compared with the resident run only (saves a run)
        assert converse(_llm(smol), params) == resident[kind]
    llm = _llm(smol, kv_offload_gib=_blocks(smol, 64))
    assert converse(llm, params) == resident[kind]
    stats = check_no_leaks(llm)
    (host,) = stats.kv_tiers
    # Every returning turn found its evicted prefix in the host tier and copied it back:
    # the device cache and the tier together served what an all-resident cache served.
    assert stats.external_prefix_cache_hits > 0
    if kind == "greedy":
        assert stats.prefix_cache_hits + stats.external_prefix_cache_hits == resident["hits"]
    assert host.hit_tokens == stats.external_prefix_cache_hits
    assert host.loaded_bytes == host.hit_tokens // 16 * _blocks(smol, 1) * GIB
    assert host.stored_bytes > 0


def test_tier_smaller_than_one_conversation(smol: ModelParts, resident: dict[str, Any]) -> None:
    llm = _llm(smol, kv_offload_gib=_blocks(smol, 2))  # 2 blocks; a conversation has 4+
    assert converse(llm, GREEDY) == resident["greedy"]
    stats = check_no_leaks(llm)
    # Part of a prefix came back, the rest was recomputed (and the misses were counted).
    total = stats.prefix_cache_hits + stats.external_prefix_cache_hits
    assert 0 < stats.external_prefix_cache_hits and total < resident["hits"]
    assert stats.external_prefix_cache_queries > stats.external_prefix_cache_hits + 3 * 16
    assert len(llm.llm_engine.kv_tiers.host.entries) == 2  # type: ignore[union-attr]


def test_preemption_with_tiers(smol: ModelParts) -> None:
    """Concurrent requests in a cache too small for them: preempted requests come back through
    the tier and every output matches the plain engine's."""
    tok = smol.tokenizer
    prompts = [tok.encode(s[:100]) for s in STORIES * 2]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    plain = smol.llm(kv_cache_gib=_blocks(smol, 12), max_num_seqs=6)
    tiered = smol.llm(
        kv_cache_gib=_blocks(smol, 12), max_num_seqs=6, kv_offload_gib=_blocks(smol, 64)
    )
    want = [o.token_ids for o in plain.generate(prompts, params)]
    got = [o.token_ids for o in tiered.generate(prompts, params)]
    assert got == want
    assert tiered.llm_engine.scheduler.num_preemptions > 0
    check_no_leaks(tiered)


def _disk_llm(smol: ModelParts, root: Path) -> LLM:
    return _llm(
        smol,
        kv_offload_gib=_blocks(smol, 2),
        kv_offload_dir=str(root),
        kv_offload_disk_gib=_blocks(smol, 200),
    )


def test_both_copy_paths_match_resident(smol: ModelParts, resident: dict[str, Any]) -> None:
    """The default on the CPU copies layer by layer; the chunked path (CUDA's default until
    the layer-wise one is measured there) gives the same outputs."""
    from deploylab.engine.kv_tiers.layerwise import LayerWaits, LayerwiseKVTiers

    layerwise = _llm(smol, kv_offload_gib=_blocks(smol, 64)).llm_engine
    assert isinstance(layerwise.kv_tiers, LayerwiseKVTiers)
    assert isinstance(layerwise.kv_cache.layers, LayerWaits)
    llm = _llm(smol, kv_offload_gib=_blocks(smol, 64), kv_offload_layerwise=False)
    tiers = llm.llm_engine.kv_tiers
    assert tiers is not None and not isinstance(tiers, LayerwiseKVTiers)
    assert not tiers.host.layer_major
    assert converse(llm, GREEDY) == resident["greedy"]
    assert check_no_leaks(llm).external_prefix_cache_hits > 0


@pytest.mark.parametrize("layerwise", [True, False])
def test_write_ahead_finds_evicted_blocks_on_the_host(
    smol: ModelParts, resident: dict[str, Any], layerwise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With write-ahead, full blocks reach the host tier before they are evicted, so most
    evictions copy nothing; outputs stay the resident ones, nothing leaks."""
    from deploylab.engine.kv_tiers.manager import KVTiers

    seen: list[bool] = []  # per eviction: was the block already on the host?
    evict = KVTiers.on_evict

    def on_evict(self: KVTiers, block: int, h: int | None, tokens: Any) -> None:
        if h is not None and tokens is not None:
            seen.append(self.host.get(h, tokens) is not None)
        evict(self, block, h, tokens)

    monkeypatch.setattr(KVTiers, "on_evict", on_evict)
    counts = {}
    for ahead in (False, True):
        seen.clear()
        llm = _llm(
            smol,
            kv_offload_gib=_blocks(smol, 64),
            kv_offload_layerwise=layerwise,
            kv_offload_write_ahead=ahead,
        )
        assert converse(llm, GREEDY) == resident["greedy"]
        assert check_no_leaks(llm).external_prefix_cache_hits > 0
        counts[ahead] = (sum(seen), len(seen))
    # Off: only blocks that came back from the host are there when evicted again.
    (before, _), (found, n_on) = counts[False], counts[True]
    assert found > before and found >= n_on * 3 // 4, counts


def test_layerwise_gather_groups_and_rising_runs(
    smol: ModelParts, resident: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies out in gather groups of one block (so the two staging buffers are reused many
    times) give the resident outputs; every pool copy is one rising run of slots (blocks
    sorted by slot: no flips); in a step with both, the copies out are issued before the
    copies in (the order measured best on the H100: docs/benchmarks.md)."""
    from deploylab.engine.kv_tiers import layerwise

    calls: list[tuple[bool, list[int]] | None] = []  # None: a transfer starts
    real = layerwise.apply_copy_runs

    def recording(pool: Any, staging: Any, runs: list[Any], to_pool: bool) -> None:
        slots = []
        for lo, _, n, falling in runs:
            slots += list(range(lo, lo + n))[:: -1 if falling else 1]
        calls.append((to_pool, slots))
        real(pool, staging, runs, to_pool)

    monkeypatch.setattr(layerwise, "apply_copy_runs", recording)
    llm = _llm(smol, kv_offload_gib=_blocks(smol, 64))
    tiers = llm.llm_engine.kv_tiers
    assert isinstance(tiers, layerwise.LayerwiseKVTiers)
    monkeypatch.setattr(tiers, "STAGING_BYTES", tiers.block_bytes)  # one block per group
    real_transfer = tiers.transfer

    def marking() -> None:
        calls.append(None)
        real_transfer()

    monkeypatch.setattr(tiers, "transfer", marking)
    assert converse(llm, GREEDY) == resident["greedy"]
    stats = check_no_leaks(llm)
    assert stats.external_prefix_cache_hits > 0
    runs = [c[1] for c in calls if c is not None]
    assert runs and all(r == sorted(r) for r in runs)
    assert any(len(r) == 1 for r in runs)  # the one-block groups of the copies out
    steps: list[list[bool]] = []
    for c in calls:
        if c is None:
            steps.append([])
        else:
            steps[-1].append(c[0])
    both = [d for d in steps if True in d and False in d]
    assert both and all(d == sorted(d, reverse=True) for d in both)  # out (True) first


def test_disk_tier_outputs_match(
    smol: ModelParts, resident: dict[str, Any], tmp_path: Path
) -> None:
    llm = _disk_llm(smol, tmp_path)
    assert converse(llm, GREEDY) == resident["greedy"]
    llm.llm_engine.kv_tiers.disk.flush()  # type: ignore[union-attr]
    stats = check_no_leaks(llm)
    host, disk = stats.kv_tiers
    assert disk.tier == "disk" and disk.hit_tokens > 0 and disk.stored_bytes > 0
    assert disk.errors == 0 and disk.used_bytes > 0
    assert list(tmp_path.rglob("*.kvblock"))


def _damage_then_return(smol: ModelParts, root: Path, damage: Any) -> tuple[LLM, list[Any]]:
    """One turn of each conversation, `damage` every block file, then the returning turns."""
    llm = _disk_llm(smol, root)
    tok = llm.tokenizer
    prompts = [tok.encode(s) for s in STORIES]
    first = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    llm.llm_engine.kv_tiers.disk.flush()  # type: ignore[union-attr]
    files = sorted(root.rglob("*.kvblock"))
    assert files
    for path in files:
        damage(path)
    back = [p + o + tok.encode(" And then, part 2?") for p, o in zip(prompts, first, strict=True)]
    return llm, [llm.generate([p], GREEDY)[0].token_ids for p in back]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_disk_file_is_recomputed_and_logged_once(
    smol: ModelParts,
    resident: dict[str, Any],
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF  # a byte of the block data: only the checksum can tell
        path.write_bytes(bytes(data))

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with caplog.at_level(logging.WARNING, logger="deploylab.engine.kv_tiers.disk"):
        llm, outs = _damage_then_return(smol, tmp_path, flip if damage == "flip" else truncate)
    assert outs == resident["greedy"][3:]
    stats = check_no_leaks(llm)
    disk = stats.kv_tiers[1]
    assert disk.errors >= 1
    assert len([r for r in caplog.records if "KV disk tier" in r.message]) == 1


def test_full_disk_is_logged_once_and_recomputed(
    smol: ModelParts,
    resident: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A disk that is full (ENOSPC from every write; no real full file system can be made
    here without root): nothing is kept on disk and the answers are unchanged."""

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_module, "save_file", full)
    with caplog.at_level(logging.WARNING, logger="deploylab.engine.kv_tiers.disk"):
        llm = _disk_llm(smol, tmp_path)
        assert converse(llm, GREEDY) == resident["greedy"]
        llm.llm_engine.kv_tiers.disk.flush()  # type: ignore[union-attr]
    stats = check_no_leaks(llm)
    disk = stats.kv_tiers[1]
    assert disk.errors > 1 and disk.used_bytes == 0 and disk.stored_bytes == 0
    assert not list(tmp_path.rglob("*.kvblock*"))
    assert len([r for r in caplog.records if "No space left" in r.message]) == 1

"""KV-tier parts without a model: the cost model's decision, the disk store's identity and
cap, the settings' validation, and the load-test report's KV-tier series."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from deploylab.engine import EngineConfig
from deploylab.engine.kv_tiers import CostModel
from deploylab.engine.kv_tiers.disk import DiskStore
from deploylab.errors import ConfigError
from deploylab.loadtest.scrape import MetricSeries, derived_series

BLOCK = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)


def test_cost_model_copies_only_when_cheaper_than_recomputing() -> None:
    cost = CostModel(block_bytes=1_000_000, block_size=16)
    assert cost.worth_loading("host")  # nothing measured yet: take the hit
    cost.observe_copy("host", 10_000_000, 0.001)  # 10 GB/s: 0.1 ms a block
    cost.observe_prefill(32, 1.0)  # under MIN_PREFILL_TOKENS: ignored
    assert cost.prefill_tps is None
    cost.observe_prefill(1600, 1.0)  # 1600 tokens/s: 10 ms a block
    assert cost.worth_loading("host")
    cost.observe_copy("disk", 1_000_000, 0.05)  # 20 MB/s: 50 ms a block, slower than prefill
    assert not cost.worth_loading("disk")
    assert CostModel(1_000_000, 16, "always", dict(cost.bandwidth), 1600).worth_loading("disk")


def test_disk_store_keeps_other_identities_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = DiskStore(tmp_path, "model-a|bs=16", 1 << 20)
    assert a.write(42, (1, 2, 3), BLOCK)
    assert torch.equal(a.read(42, (1, 2, 3)), BLOCK)  # type: ignore[arg-type]
    assert a.read(42, (1, 2, 4)) is None  # other tokens under the same hash: not used
    b = DiskStore(tmp_path, "model-b|bs=16", 1 << 20)
    assert not b.contains(42)  # another model's directory
    assert a.write(43, (1, 2, 3), BLOCK)
    shutil.copy(next(a.dir.glob("*.kvblock")), b.dir)  # a file moved by hand
    b = DiskStore(tmp_path, "model-b|bs=16", 1 << 20)
    with caplog.at_level(logging.WARNING):
        names = [p.name for p in b.dir.glob("*.kvblock")]
        h = int(names[0].split(".")[0], 16)
        assert b.read(h if h < 2**63 else h - 2**64, (1, 2, 3)) is None
    assert b.errors == 1 and "another model" in caplog.text


def test_disk_store_cap_evicts_oldest_files(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "m", 2400)  # room for a few tiny block files
    for h in range(6):
        assert store.write(h, (h,), BLOCK)
    assert store.used_bytes <= 2400
    assert not store.contains(0) and store.contains(5)
    again = DiskStore(tmp_path, "m", 2400)  # a restart indexes what is there
    assert again.used_bytes == store.used_bytes


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"kv_offload_gib": -1.0}, "kv_offload_gib"),
        ({"kv_offload_dir": "/tmp/x"}, "needs a host tier"),
        ({"kv_offload_write_ahead": True}, "kv_offload_gib > 0"),
        ({"kv_offload_gib": 1.0, "kv_offload_write_ahead": "yes"}, "kv_offload_write_ahead"),
        ({"kv_offload_gib": 1.0, "kv_offload_policy": "never"}, "kv_offload_policy"),
        ({"kv_offload_gib": 1.0, "enable_prefix_caching": False}, "enable_prefix_caching"),
        ({"kv_offload_gib": 1.0, "kv_offload_dir": "/tmp/x", "kv_offload_disk_gib": 0}, "disk"),
    ],
)
def test_bad_kv_tier_settings_name_the_field(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        EngineConfig(**fields)  # type: ignore[arg-type]


def test_report_derives_kv_tier_hit_rate_and_bytes_per_second() -> None:
    def counter(title: str, values: list[float | None]) -> MetricSeries:
        return MetricSeries(
            title=title, unit="tokens", kind="counter", sources=["x"], t_s=[0, 1, 2],
            values=values,
        )  # fmt: skip

    out = derived_series(
        {
            "external_prefix_cache_queries_total": counter("q", [0, 100, 100]),
            "external_prefix_cache_hits_total": counter("h", [0, 75, 75]),
            "kv_host_load_bytes_total": counter("b", [0, 4096, 6144]),
        }
    )
    assert out["external_prefix_cache_hit_rate"].values == [0.75, None]
    assert out["kv_host_load_bytes_per_s"].values == [4096, 2048]


def test_copy_runs_moves_every_slot_whatever_its_order() -> None:
    """Rising and falling runs of slots, to and from the pool, with gaps in the rows."""
    import random

    from deploylab.engine.kv_tiers.manager import _copy_runs

    pool = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3)
    for trial in range(100):
        rnd = random.Random(trial)
        slots = rnd.sample(range(20), rnd.randrange(1, 10))
        if trial % 2:  # mostly runs
            start = rnd.randrange(10)
            slots = list(range(start, start + 5))[:: rnd.choice([1, -1])] + slots[:2]
            slots = list(dict.fromkeys(slots))
        rows = sorted(rnd.sample(range(12), len(slots)))
        staging = torch.zeros(12, 3)
        _copy_runs(pool, slots, staging, to_pool=False, rows=rows)
        assert torch.equal(staging[rows], pool[slots])
        out = torch.zeros_like(pool)
        _copy_runs(out, slots, staging[rows], to_pool=True)
        assert torch.equal(out[slots], pool[slots])


def test_disk_writer_writes_in_the_background_and_drops_past_its_queue(tmp_path: Path) -> None:
    from deploylab.engine.kv_tiers.writer import DiskWriter

    nbytes = BLOCK.numel() * BLOCK.element_size()
    writer = DiskWriter(DiskStore(tmp_path, "m", 1 << 20), max_pending_bytes=nbytes)
    assert writer.write(1, (1,), BLOCK)
    assert writer.contains(1)  # queued or written: either way readable
    assert torch.equal(writer.read(1, (1,)), BLOCK)  # type: ignore[arg-type]
    writer.flush()
    assert writer.store.contains(1) and writer.written_bytes == nbytes
    writer._pending_bytes = nbytes  # as if one block were still queued
    assert not writer.write(3, (3,), BLOCK)  # no room in the queue: dropped, not written
    writer._pending_bytes = 0
    assert writer.write(2, (2,), BLOCK)
    writer.flush()
    assert writer.dropped == 1 and writer.store.contains(2) and not writer.contains(3)

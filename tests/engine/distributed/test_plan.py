"""Shard plans: heads split by KV-head groups, replicated KV heads, clear errors."""

from __future__ import annotations

import pytest

from deploylab.engine import EngineConfig
from deploylab.engine.distributed import ShardPlan, check_tensor_parallel
from deploylab.engine.models.presets import get_preset
from deploylab.errors import ConfigError

SMOL = get_preset("tiny").with_updates(
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536
)


def test_smollm2_heads_split_by_kv_groups_unevenly() -> None:
    """9 query / 3 KV heads over 2 ranks: 2 KV heads (6 query) and 1 (3 query)."""
    a, b = (ShardPlan.build(SMOL, r, 2) for r in range(2))
    assert (a.kv_heads, a.q_heads) == ((0, 2), (0, 6))
    assert (b.kv_heads, b.q_heads) == ((2, 3), (6, 9))
    assert a.intermediate == (0, 768) and b.intermediate == (768, 1536)
    local = b.local_config(SMOL)
    assert (local.num_attention_heads, local.num_key_value_heads) == (3, 1)
    assert local.vocab_size == SMOL.vocab_size  # token ids are still checked in full


def test_fewer_kv_heads_than_ranks_replicates_them() -> None:
    cfg = SMOL.with_updates(num_attention_heads=32, num_key_value_heads=8)
    plans = [ShardPlan.build(cfg, r, 16) for r in range(16)]
    assert [p.kv_heads for p in plans[:4]] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [p.q_heads for p in plans[:3]] == [(0, 2), (2, 4), (4, 6)]
    # each rank's query heads belong to its KV head (groups of 4)
    assert all(p.q_heads[0] // 4 == p.kv_heads[0] for p in plans)


def test_vocab_rows_pad_only_at_the_end() -> None:
    cfg = SMOL.with_updates(vocab_size=101)
    spans = [ShardPlan.build(cfg, r, 3).vocab for r in range(3)]
    assert spans == [(0, 34), (34, 68), (68, 101)]


def test_sizes_that_do_not_fit_the_heads_are_refused() -> None:
    with pytest.raises(ConfigError, match="does not fit this model's heads"):
        check_tensor_parallel(SMOL, 4)  # 3 KV heads, 9 query heads


def test_tensor_parallel_size_is_validated() -> None:
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0)


def test_speculative_decoding_under_tp_fails_clearly() -> None:
    from deploylab.engine import LLMEngine

    spec = {"method": "ngram", "num_speculative_tokens": 2}
    cfg = EngineConfig(random_weights="tiny", tensor_parallel_size=2, speculative_config=spec)
    with pytest.raises(ConfigError, match="Speculative decoding does not run under tensor"):
        LLMEngine(cfg)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"enable_lora": True}, "Multi-LoRA does not run under tensor parallelism"),
        ({"kv_offload_gib": 0.5}, "KV cache tiers do not run under tensor parallelism"),
    ],
)
def test_other_features_under_tp_fail_clearly(extra: dict[str, object], message: str) -> None:
    from deploylab.engine import LLMEngine

    cfg = EngineConfig(random_weights="tiny", tensor_parallel_size=2, **extra)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        LLMEngine(cfg)


def test_executor_backend_is_validated() -> None:
    with pytest.raises(ConfigError, match="distributed_executor_backend 'ray'"):
        EngineConfig(distributed_executor_backend="ray")
    with pytest.raises(ConfigError, match="needs distributed_executor_backend 'mp'"):
        EngineConfig(tensor_parallel_size=2, distributed_executor_backend="uni")

"""Roofline inputs: parameter counts, decode bytes and prefill FLOPs of a model shape."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine.models.cost import (
    decode_step_bytes,
    kv_bytes_per_token,
    layer_params,
    param_count,
    prefill_flops,
)
from deploylab.engine.models.loader import init_random_model
from deploylab.engine.models.presets import get_preset


@pytest.mark.parametrize(
    "changes", [{}, {"qkv_bias": True}, {"qk_norm": True}, {"tie_word_embeddings": False}]
)
def test_param_count_matches_the_built_model(changes: dict[str, bool]) -> None:
    cfg = get_preset("tiny").with_updates(**changes)
    model = init_random_model(cfg, torch.float32, torch.device("cpu"))
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())


def test_llama_3_2_1b_figures() -> None:
    cfg = get_preset("llama-3.2-1b")
    assert param_count(cfg) == pytest.approx(1.236e9, rel=1e-3)  # the published 1.24B
    assert kv_bytes_per_token(cfg, 2) == 32 * 1024  # 16 layers x 2 x 8 heads x 64 x 2 bytes
    weights = decode_step_bytes(cfg, 2, [])
    assert weights == pytest.approx(2 * param_count(cfg), rel=1e-3)  # tied: read once
    assert decode_step_bytes(cfg, 2, [1024] * 4) == weights + 4 * 1024 * 32 * 1024


def test_prefill_flops_grow_linearly_plus_the_attention_triangle() -> None:
    cfg = get_preset("llama-3.2-1b")
    linear = 2 * cfg.num_hidden_layers * layer_params(cfg)
    head = 2 * cfg.hidden_size * cfg.vocab_size
    attn_unit = 4 * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
    assert prefill_flops(cfg, 1) == linear + head + attn_unit
    assert prefill_flops(cfg, 4096) == 4096 * linear + head + attn_unit * 4096 * 4097 // 2
    # cached context adds only attention work
    extra = prefill_flops(cfg, 16, cached=100) - prefill_flops(cfg, 16)
    assert extra == attn_unit * 16 * 100

"""ARMT on the engine's Llama: packed weights, checkpoint loading, fresh memory params."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deploylab.armt.config import ARMTConfig
from deploylab.armt.model import ARMTModel, load_armt
from deploylab.engine.models.loader import init_random_model
from deploylab.errors import ModelNotFoundError, UsageError

from .conftest import TINY, write_hf_checkpoint


def test_packing_shares_storage_and_keeps_the_base_model_output() -> None:
    base = init_random_model(TINY, seed=5)
    ids = torch.randint(0, TINY.vocab_size, (1, 12))
    positions = torch.arange(12).unsqueeze(0)
    with torch.inference_mode():
        before = base(ids, positions).clone()
    armt = ARMTModel(base, ARMTConfig(segment_size=4, num_mem_tokens=2, d_mem=4))
    packed = armt.packed
    for i, layer in enumerate(armt.layers):
        assert layer.self_attn.q_proj.weight.data_ptr() == packed.qkv[i].data_ptr()
        assert layer.mlp.down_proj.weight.data_ptr() == packed.down[i].data_ptr()
        assert layer.input_layernorm.weight.data_ptr() == packed.ln1[i].data_ptr()
        up = layer.mlp.up_proj.weight
        torch.testing.assert_close(packed.gate_up[i, TINY.intermediate_size :], up)
    with torch.inference_mode():
        after = base(ids, positions)
    assert torch.equal(before, after)


def test_load_checkpoint_through_the_engine_loader(tmp_path: Path) -> None:
    saved = write_hf_checkpoint(tmp_path / "ckpt", seed=7)
    cfg = ARMTConfig(segment_size=8, num_mem_tokens=3, d_mem=4)
    armt = load_armt(tmp_path / "ckpt", cfg)
    params = dict(armt.base.named_parameters())
    for name in (
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.2.mlp.gate_proj.weight",
        "lm_head.weight",
    ):
        assert torch.equal(params[name], saved[name])
    d = TINY.hidden_size
    mem = armt.memory
    assert mem.mem_tokens.shape == (3, d)
    assert mem.w_mq.shape == (TINY.num_hidden_layers, 4, d)
    assert mem.w_write.shape[1] % 8 == 0 and mem.w_write.shape[1] >= 4 + d + 1
    assert float(mem.w_mq.abs().max()) > 0
    assert float(mem.w_write[:, 4 + d :].abs().max()) > 0  # W_mb row
    assert float(mem.w_write[:, 4 : 4 + d].abs().max()) == 0  # W_mv: zero (paper's init)
    assert float(mem.w_write[:, 4 + d + 1 :].abs().max()) == 0  # padding rows
    again = load_armt(tmp_path / "ckpt", cfg)
    assert torch.equal(again.memory.w_mq, mem.w_mq)  # fresh params are seeded
    other = load_armt(tmp_path / "ckpt", ARMTConfig(8, 3, 4, seed=1, w_mv_init="normal"))
    assert not torch.equal(other.memory.w_mq, mem.w_mq)
    assert float(other.memory.w_write[:, 4 : 4 + d].abs().max()) > 0


def test_unknown_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such local path"):
        load_armt(tmp_path / "missing", ARMTConfig())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"segment_size": 0}, "segment_size"),
        ({"num_mem_tokens": 0}, "num_mem_tokens"),
        ({"d_mem": -1}, "d_mem"),
        ({"nu": 0}, "nu"),
        ({"eps": 0.0}, "eps"),
        ({"w_mv_init": "ones"}, "w_mv_init"),
        ({"segment_size": 2.5}, "segment_size"),
    ],
)
def test_bad_config_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ARMTConfig(**kwargs)  # type: ignore[arg-type]


def test_config_sizes() -> None:
    cfg = ARMTConfig(segment_size=1024, d_mem=64)
    assert cfg.d_key == 384
    assert cfg.num_segments(131072) == 128
    assert cfg.num_segments(1025) == 2

"""Adapter loading: PEFT files in, clear errors for adapters that can't serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from deploylab.engine import SamplingParams
from deploylab.engine.lora import LoraAdapterError, LoraNotFoundError, load_adapter

from .conftest import SPECS, AdapterSpec, save_adapter

A8 = SPECS[0]


@pytest.fixture(scope="module")
def saved(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = save_adapter(tiny.model, SPECS[2], tmp_path_factory.mktemp("ad"))
    return path


def copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_loads_peft_files_with_rslora_scaling(tiny: Any, saved: Path) -> None:
    adapter = load_adapter("c", saved, tiny.model.config, max_rank=16)
    assert adapter.rank == 16 and adapter.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert adapter.scaling == pytest.approx(8 / 16**0.5)  # rsLoRA: alpha / sqrt(r)
    raw = load_file(str(saved / "adapter_model.safetensors"))
    b = next(v for k, v in raw.items() if "layers.1.mlp.up_proj.lora_B" in k)
    assert torch.equal(adapter.weights[(1, "up_proj")][1], b * adapter.scaling)


def test_plain_scaling_is_alpha_over_r(tiny: Any, tmp_path: Path) -> None:
    path, _ = save_adapter(tiny.model, A8, tmp_path)
    assert load_adapter("a", path, tiny.model.config, 16).scaling == pytest.approx(16 / 8)


def test_rank_over_limit(tiny: Any, saved: Path) -> None:
    with pytest.raises(LoraAdapterError, match=r"rank 16, over .*--max-lora-rank 8"):
        load_adapter("c", saved, tiny.model.config, max_rank=8)


def test_unsupported_target_is_named(tiny: Any, tmp_path: Path) -> None:
    spec = AdapterSpec("head", 4, 8, ("q_proj", "lm_head"))
    path, _ = save_adapter(tiny.model, spec, tmp_path)
    with pytest.raises(LoraAdapterError, match="cannot adapt: lm_head"):
        load_adapter("h", path, tiny.model.config, 16)


def test_shape_mismatch_says_which_layer(tiny: Any, saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    file = path / "adapter_model.safetensors"
    raw = load_file(str(file))
    key = next(k for k in raw if "layers.0.self_attn.q_proj.lora_A" in k)
    raw[key] = torch.zeros(16, 32)  # trained on a model with hidden size 32
    save_file(raw, str(file))
    with pytest.raises(LoraAdapterError, match=r"layer 0 q_proj .*expected \(16, 64\)"):
        load_adapter("c", path, tiny.model.config, 16)


def test_corrupt_weights(tiny: Any, saved: Path, tmp_path: Path) -> None:
    path = copy(saved, tmp_path)
    file = path / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(LoraAdapterError, match="corrupt or unreadable"):
        load_adapter("c", path, tiny.model.config, 16)


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"peft_type": "LORA", "r": 16, "use_dora": True}), "use_dora"),
        (json.dumps({"peft_type": "IA3"}), "only LoRA"),
    ],
)
def test_bad_config(tiny: Any, saved: Path, tmp_path: Path, config_text: str, message: str) -> None:
    path = copy(saved, tmp_path)
    (path / "adapter_config.json").write_text(config_text)
    with pytest.raises(LoraAdapterError, match=message):
        load_adapter("c", path, tiny.model.config, 16)


def test_missing_files(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(LoraAdapterError, match="not a directory"):
        load_adapter("x", tmp_path / "nope", tiny.model.config, 16)
    with pytest.raises(LoraAdapterError, match="no adapter_config.json"):
        load_adapter("x", tmp_path, tiny.model.config, 16)


def test_engine_keeps_serving_after_a_bad_adapter(tiny: Any, saved: Path) -> None:
    engine = tiny.engine(enable_lora=True, max_lora_rank=8)
    with pytest.raises(LoraAdapterError):
        engine.add_lora("big", str(saved))
    assert engine.list_loras() == []
    with pytest.raises(LoraNotFoundError, match="'big' does not exist"):
        engine.add_request("r0", [5, 6, 7], SamplingParams(max_tokens=2), lora_name="big")
    engine.add_request("r1", [5, 6, 7], SamplingParams(max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()


def test_lora_off_names_the_fix(tiny: Any) -> None:
    engine = tiny.engine()
    with pytest.raises(LoraNotFoundError, match="LoRA adapters are off"):
        engine.make_sequence("r", [1, 2], None, lora_name="x")

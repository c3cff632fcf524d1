"""Every input a user can get wrong raises a clear deploylab error, and the engine keeps
serving the requests it already has."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploylab.engine import LLM, EngineConfig, SamplingParams
from deploylab.errors import (
    ConfigError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    PromptTooLongError,
    UnsupportedArchitectureError,
)

from .conftest import ModelParts

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}


def load(path: Path) -> LLM:
    return LLM(model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.01)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -5}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"min_tokens": 20, "max_tokens": 5}, "min_tokens"),
        ({"logprobs": 50}, "logprobs"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_bad_sampling_params_name_the_field(params: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**params)
    assert info.value.param == param
    assert param in str(info.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"block_size": 3},
        {"max_num_seqs": 0},
        {"max_num_seqs": 64, "max_num_batched_tokens": 32},
        {"kv_cache_gib": 0},
        {"gpu_memory_utilization": 1.5},
        {"num_gpu_blocks_override": 1},
        {"dtype": "int8"},
        {"device": "tpu"},
    ],
)
def test_bad_engine_config(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(**settings)


def test_bad_requests_raise_and_the_engine_keeps_serving(tiny: ModelParts) -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = tiny.llm().generate([[5, 6, 7, 8]], params)[0].token_ids
    engine = tiny.engine(max_model_len=64)
    engine.add_request("good", [5, 6, 7, 8], params)
    tokens = [t for d in engine.step() for t in d.new_token_ids]
    with pytest.raises(PromptTooLongError, match="64"):
        engine.add_request("long", list(range(3, 70)), params)
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("empty", [], params)
    for i, bad in enumerate(([1, 2, 10_000], [1, -2], [1, True], [1, 2.0], [1, "2"])):
        with pytest.raises(InvalidRequestError, match="token ids"):
            engine.add_request(f"bad{i}", bad, params)
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        engine.add_request("text", "hello", params)  # the tiny model has no tokenizer
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("good", [1, 2], params)
    mutated = SamplingParams()
    mutated.temperature = -1.0  # changed after construction: re-validated on submission
    with pytest.raises(InvalidRequestError, match="temperature"):
        engine.add_request("neg", [1], mutated)
    while engine.has_unfinished_requests():
        for d in engine.step():
            tokens += d.new_token_ids
    assert tokens == expected


def test_empty_text_prompt(tiny_tok: ModelParts) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny_tok.llm().generate("", SamplingParams())


def test_vllm_dict_prompts(tiny_tok: ModelParts) -> None:
    """vLLM's `{"prompt": ...}` and `{"prompt_token_ids": ...}` mean what they say (a dict
    was once read as its key names: a five-token prompt "prompt_token_ids")."""
    llm = tiny_tok.llm()
    params = SamplingParams(temperature=0, max_tokens=3)
    ids = [100, 101, 102, 103, 104, 105, 106]
    text = llm.generate("Hello there", params)[0]
    assert llm.generate({"prompt": "Hello there"}, params)[0].token_ids == text.token_ids
    by_ids = llm.generate({"prompt_token_ids": ids}, params)[0]
    assert by_ids.prompt_token_ids == ids
    assert by_ids.token_ids == llm.generate(ids, params)[0].token_ids
    many = llm.generate([{"prompt_token_ids": ids}, {"prompt": "Hello there"}], params)
    assert [o.token_ids for o in many] == [by_ids.token_ids, text.token_ids]
    for bad in ({"text": "hi"}, {"prompt": "hi", "prompt_token_ids": ids}, {}):
        with pytest.raises(InvalidRequestError, match="prompt_token_ids"):
            llm.generate(bad, params)


def test_unknown_model() -> None:
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        LLM(model="no-such-model")


def test_unknown_random_shape() -> None:
    with pytest.raises(ModelNotFoundError, match="llama-9t"):
        LLM(random_weights="llama-9t", device="cpu")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    cfg = dict(TINY_CONFIG, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel"):
        load(tmp_path)


def test_unsupported_gguf_architecture_is_named(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        load(path)


def test_corrupt_safetensors_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    file = tmp_path / "model.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(64, 16)}, str(file))
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(tmp_path)


def test_missing_weights_are_reported(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    save_file({"model.embed_tokens.weight": torch.zeros(64, 16)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ModelLoadError, match="missing weights"):
        load(tmp_path)


def test_truncated_gguf_names_the_file(tmp_path: Path, smol: ModelParts) -> None:
    path = tmp_path / "cut.gguf"
    with smol.path.open("rb") as src:
        path.write_bytes(src.read(3_000_000))
    with pytest.raises(ModelLoadError, match="cut.gguf"):
        load(path)


def test_garbage_gguf_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(ModelLoadError, match="junk.gguf"):
        load(path)
    shutil.rmtree(tmp_path)

"""Build a `LlamaForCausalLM` from a Hugging Face directory, a GGUF file or random weights.

Weights are read on the CPU, converted to the target dtype and assigned into a model built on
the `meta` device, so no memory is spent on a throw-away random initialisation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.models.registry import config_from_hf, get_model_class
from deploylab.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Checkpoint entries that are derived, not learned.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_model(
    config: LlamaConfig,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    source: str,
) -> LlamaForCausalLM:
    """A model with `weights` (HF names) assigned; missing or misshapen weights raise
    ModelLoadError naming `source`."""
    cls = get_model_class(config.architecture)
    with torch.device("meta"):
        model = cls(config)
    assert isinstance(model, LlamaForCausalLM)
    expected = dict(model.named_parameters())
    missing = [n for n in expected if n not in weights]
    if config.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelLoadError(f"{source}: missing weights {shown}; the checkpoint is incomplete.")
    state: dict[str, torch.Tensor] = {}
    for name, param in expected.items():
        if name not in weights:
            continue
        tensor = weights[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ModelLoadError(
                f"{source}: weight {name} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(param.shape)}; config and weights do not match."
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary_emb.inv_freq = torch.empty(0, device=device)
    model.model.rotary_emb.reset_parameters()
    return model.eval().requires_grad_(False)


def init_random_model(
    config: LlamaConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LlamaForCausalLM:
    """A model with random weights (normal(0, initializer_range), norms 1, biases 0)."""
    device = torch.device(device)
    cls = get_model_class(config.architecture)
    with torch.device("meta"):
        model = cls(config)
    assert isinstance(model, LlamaForCausalLM)
    model = model.to_empty(device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    std = config.initializer_range
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=gen)
    model.tie_weights()
    model.model.rotary_emb.reset_parameters()
    return model.eval().requires_grad_(False)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file; ModelLoadError names the file when it is unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot read {path}: {exc}. The file is corrupt.") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object.")
    return data


def safetensors_files(directory: Path) -> list[Path]:
    """The weight shards of an HF directory (from the index file when there is one)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        files = sorted({directory / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"{index} lists shard {f.name}, which is missing.")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"No *.safetensors files in {directory}. Save the model with "
            "`save_pretrained(..., safe_serialization=True)`; .bin checkpoints are not supported."
        )
    return files


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one file; a corrupt or truncated file raises ModelLoadError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name)
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors raises its own error types, some not exported
        raise ModelLoadError(
            f"Cannot read safetensors file {path}: {exc}. The file is corrupt or truncated; "
            "re-download or re-save it."
        ) from exc


def load_hf_config(directory: Path) -> LlamaConfig:
    """The `LlamaConfig` of an HF directory, with eos ids from generation_config.json too."""
    config = config_from_hf(read_json(directory / "config.json"))
    gen_path = directory / "generation_config.json"
    if gen_path.is_file():
        eos = read_json(gen_path).get("eos_token_id")
        extra = eos if isinstance(eos, list) else ([] if eos is None else [eos])
        merged = tuple(dict.fromkeys([*config.eos_token_ids, *map(int, extra)]))
        config = config.with_updates(eos_token_ids=merged)
    return config


def load_hf_dir(
    directory: Path, dtype: torch.dtype, device: torch.device
) -> tuple[LlamaForCausalLM, LlamaConfig]:
    """Load `config.json` + safetensors (sharded or not)."""
    config = load_hf_config(directory)
    weights: dict[str, torch.Tensor] = {}
    for path in safetensors_files(directory):
        for name, tensor in iter_safetensors(path):
            if not name.endswith(_IGNORED_SUFFIXES):
                weights[name] = tensor
    model = build_model(config, weights, dtype, device, str(directory))
    return model, config


def load_model(
    path: Path, dtype: torch.dtype, device: torch.device
) -> tuple[LlamaForCausalLM, LlamaConfig]:
    """Load a GGUF file or an HF directory (a resolved local path)."""
    if path.is_file():
        from deploylab.engine.models.gguf_loader import load_gguf

        return load_gguf(path, dtype, device)
    return load_hf_dir(path, dtype, device)

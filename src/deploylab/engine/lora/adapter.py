"""PEFT LoRA adapters: read `adapter_config.json` + `adapter_model.safetensors`, validate them
against the base model, and keep each target's A and scaled B as plain tensors."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deploylab.engine.models.config import LlamaConfig
from deploylab.errors import ModelLoadError, ModelNotFoundError

# The projections an adapter may target, and where they live in a decoder layer.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")
_UNSUPPORTED_OPTIONS = (
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "lora_bias",
)


class LoraAdapterError(ModelLoadError):
    """An adapter that cannot serve on this model (bad shapes, rank, targets, files)."""


class LoraNotFoundError(ModelNotFoundError):
    """A request or command names an adapter that is not loaded."""


def module_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target projection of `config`'s layers."""
    h, i, d = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


@dataclass
class LoraAdapter:
    """One adapter's weights: per (layer, module) A `[r, in]` and B `[out, r]` with the
    scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) already folded into B."""

    name: str
    path: str
    rank: int
    scaling: float
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def target_modules(self) -> list[str]:
        """The projections this adapter changes, in model order."""
        present = {m for _, m in self.weights}
        return [m for m in TARGET_MODULES if m in present]

    def num_bytes(self) -> int:
        """Bytes of the adapter's tensors."""
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def _read_config(path: Path) -> dict[str, object]:
    file = path / "adapter_config.json"
    if not file.is_file():
        raise LoraAdapterError(
            f"LoRA adapter '{path}' has no adapter_config.json; pass a PEFT adapter directory "
            "(saved by peft's save_pretrained)."
        )
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraAdapterError(f"LoRA adapter config {file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LoraAdapterError(f"LoRA adapter config {file} must be a JSON object.")
    ptype = config.get("peft_type", "LORA")
    if str(ptype).upper() != "LORA":
        raise LoraAdapterError(f"Adapter '{path}' is a {ptype} adapter; only LoRA is served.")
    bad = [k for k in _UNSUPPORTED_OPTIONS if config.get(k)]
    if config.get("bias", "none") not in ("none", None):
        bad.append(f"bias={config['bias']!r}")
    if bad:
        raise LoraAdapterError(
            f"LoRA adapter '{path}' uses options this engine does not serve: {', '.join(bad)}. "
            "Save the adapter without them (or merge it into the base model)."
        )
    return config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise LoraAdapterError(
            f"LoRA adapter '{path}' has no adapter_model.safetensors (only the safetensors "
            "format is read; re-save with peft's save_pretrained(safe_serialization=True))."
        )
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise LoraAdapterError(f"LoRA weights {file} are corrupt or unreadable: {exc}") from exc


def _module_of(key: str) -> str:
    """The module a tensor key belongs to (`...lm_head.lora_A.weight` -> `lm_head`)."""
    m = re.search(r"([\w]+)\.(?:lora_\w+|base_layer)(?:\.\w+)*$", key)
    return m.group(1) if m else key


def _check_targets(path: Path, config: dict[str, object], tensors: dict[str, torch.Tensor]) -> None:
    wanted = config.get("target_modules")
    names: list[str] = []
    if isinstance(wanted, list):
        names = [str(n).rsplit(".", 1)[-1] for n in wanted]
    names += [m.group(2) for k in tensors if (m := _KEY.search(k))]
    names += [_module_of(k) for k in tensors if not _KEY.search(k)]
    bad = sorted({n for n in names if n not in TARGET_MODULES})
    if bad:
        raise LoraAdapterError(
            f"LoRA adapter '{path}' targets modules this engine cannot adapt: "
            f"{', '.join(bad)}. Supported: {', '.join(TARGET_MODULES)}."
        )


def load_adapter(name: str, path: str | Path, model: LlamaConfig, max_rank: int) -> LoraAdapter:
    """Read and validate a PEFT LoRA adapter directory for a model of shape `model`."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise LoraAdapterError(f"LoRA adapter path '{path}' is not a directory.")
    config = _read_config(p)
    tensors = _read_tensors(p)
    _check_targets(p, config, tensors)
    shapes = module_shapes(model)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.search(key)
        if m is None:
            raise LoraAdapterError(
                f"LoRA adapter '{p}' holds a tensor this engine does not serve: {key}."
            )
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if layer >= model.num_hidden_layers:
            raise LoraAdapterError(
                f"LoRA adapter '{p}' has weights for layer {layer}, but the model has "
                f"{model.num_hidden_layers} layers: it was trained for another base model."
            )
        pairs.setdefault((layer, module), {})[ab] = tensor
    if not pairs:
        raise LoraAdapterError(f"LoRA adapter '{p}' holds no LoRA weights.")
    ranks = set()
    for (layer, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise LoraAdapterError(f"LoRA adapter '{p}': layer {layer} {module} lacks lora_A/B.")
        a, b = ab["A"], ab["B"]
        fan_in, fan_out = shapes[module]
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != fan_in or b.shape != (fan_out, r):
            raise LoraAdapterError(
                f"LoRA adapter '{p}' does not fit this base model: layer {layer} {module} has "
                f"lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, expected "
                f"({r}, {fan_in}) and ({fan_out}, {r}). Was it trained on another model?"
            )
        ranks.add(r)
    rank = max(ranks)
    if rank > max_rank:
        raise LoraAdapterError(
            f"LoRA adapter '{p}' has rank {rank}, over this server's --max-lora-rank "
            f"{max_rank}; raise --max-lora-rank to at least {rank}."
        )
    r_cfg = int(config.get("r", rank))  # type: ignore[call-overload]
    alpha = float(config.get("lora_alpha", r_cfg))  # type: ignore[arg-type]
    scaling = alpha / math.sqrt(r_cfg) if config.get("use_rslora") else alpha / r_cfg
    weights = {
        key: (ab["A"].float().contiguous(), (ab["B"].float() * scaling).contiguous())
        for key, ab in sorted(pairs.items())
    }
    return LoraAdapter(name, str(p), rank, scaling, weights)

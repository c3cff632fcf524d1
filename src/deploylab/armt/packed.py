"""Stacked views of the engine's decoder-layer weights, for grouped GEMMs across layers.

`pack_layers` copies each weight kind of all layers into one `[L, ...]` tensor (q/k/v fused,
gate/up fused) and re-points the engine modules' parameters at slices of it. The engine's
`LlamaDecoderLayer`s keep working unchanged (the sequential executor calls them), no weight is
held twice, and the layers active on an anti-diagonal, always a contiguous range, are a plain
slice `[l0:l1+1]` of each stack: no gather per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deploylab.engine.models.llama import LlamaDecoderLayer


@dataclass
class PackedLayers:
    """Per-kind weight stacks over layers; each engine parameter is a view into one."""

    qkv: torch.Tensor  # [L, (H + 2·KV)·d, D]
    o: torch.Tensor  # [L, D, H·d]
    gate_up: torch.Tensor  # [L, 2·I, D]
    down: torch.Tensor  # [L, D, I]
    ln1: torch.Tensor  # [L, D]
    ln2: torch.Tensor  # [L, D]
    qkv_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    gate_up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None  # [L, d] (Qwen3)
    k_norm: torch.Tensor | None = None


def _stack(mods: list[nn.Module], names: list[str]) -> torch.Tensor | None:
    """Stack, per layer, the concatenation of parameters `names` (dotted paths) along dim 0;
    then re-point each of them at its slice of the stack."""
    first = [_get(mods[0], n) for n in names]
    if any(p is None for p in first):
        if not all(p is None for p in first):
            raise ValueError(f"layers have only some of {names}")
        return None
    rows = sum(p.shape[0] for p in first if p is not None)
    ref = _param(mods[0], names[0])
    stack = torch.empty(len(mods), rows, *ref.shape[1:], dtype=ref.dtype, device=ref.device)
    for layer_idx, mod in enumerate(mods):
        offset = 0
        for name in names:
            old = _param(mod, name)
            view = stack[layer_idx, offset : offset + old.shape[0]]
            view.copy_(old)
            _set(mod, name, nn.Parameter(view, requires_grad=False))
            offset += old.shape[0]
    return stack


def _get(mod: nn.Module, dotted: str) -> torch.Tensor | None:
    obj: object = mod
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    assert isinstance(obj, torch.Tensor)
    return obj


def _param(mod: nn.Module, dotted: str) -> torch.Tensor:
    tensor = _get(mod, dotted)
    assert tensor is not None
    return tensor


def _set(mod: nn.Module, dotted: str, value: nn.Parameter) -> None:
    *path, leaf = dotted.split(".")
    owner: nn.Module = mod
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, leaf, value)


def pack_layers(layers: list[LlamaDecoderLayer]) -> PackedLayers:
    """Stack the weights of `layers` (in place: their parameters become views)."""
    mods: list[nn.Module] = list(layers)
    attn = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    mlp = ["mlp.gate_proj", "mlp.up_proj"]

    def need(names: list[str]) -> torch.Tensor:
        stack = _stack(mods, names)
        assert stack is not None
        return stack

    with torch.no_grad():
        return PackedLayers(
            qkv=need([f"{n}.weight" for n in attn]),
            o=need(["self_attn.o_proj.weight"]),
            gate_up=need([f"{n}.weight" for n in mlp]),
            down=need(["mlp.down_proj.weight"]),
            ln1=need(["input_layernorm.weight"]),
            ln2=need(["post_attention_layernorm.weight"]),
            qkv_bias=_stack(mods, [f"{n}.bias" for n in attn]),
            o_bias=_stack(mods, ["self_attn.o_proj.bias"]),
            gate_up_bias=_stack(mods, [f"{n}.bias" for n in mlp]),
            down_bias=_stack(mods, ["mlp.down_proj.bias"]),
            q_norm=_stack(mods, ["self_attn.q_norm.weight"]),
            k_norm=_stack(mods, ["self_attn.k_norm.weight"]),
        )

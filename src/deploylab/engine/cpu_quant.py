"""Weight-only int4 linears on the CPU, built from a GGUF file's own Q4_0/Q4_1 blocks.

A GGUF's Q4_1 block of 32 weights stores 4-bit codes `q`, a scale `d` and a minimum `m`
(`w = d*q + m`; Q4_0: `w = d*(q - 8)`). PyTorch's CPU kernel `_weight_int4pack_mm_for_cpu`
computes with group-32 codes and per-group `(scale, zero)` as `w = (q - 8)*scale + zero`, so the
file's codes go in unchanged (`scale = d`, `zero = m + 8d`) and no re-quantization happens.
The kernel is fast only with bfloat16 activations (its float32 path measured 20-40x slower than
oneDNN's float32 linear), so rows are cast to bfloat16 and the result back: that rounding, and
bfloat16 scales, are where the int4 path's arithmetic differs from the float path. Every
call goes to the kernel, prefill chunks included: its rows do not depend on how many rows
share the call (a float path for large calls made a cached prompt's last token take the other
arithmetic). Attention keeps decode and verify rows batch-independent too
(`attention.decode_rows_attention`); a prefill chunk after cached context still rounds
differently from the whole prompt (docs/engine.md).
Measured figures and the choice: docs/engine.md "Quantized CPU path".
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploylab.errors import ConfigError

QUANTIZATION_CHOICES = ("auto", "none", "int4")
GROUP = 32
# Most rows a call sends to the int4 kernel; more take the float (oneDNN) forward. Unbounded:
# a bound makes outputs depend on batch size and prefix-cache hits (see the module docstring).
INT4_MAX_ROWS = 1 << 62
_Q4_0, _Q4_1 = "Q4_0", "Q4_1"


def resolve_quantization(choice: str, device: torch.device, path: Path | None) -> str:
    """The quantization the engine uses: `auto` is int4 on the CPU for a GGUF file, else none.
    Raises ConfigError for an unknown choice or int4 where it cannot run."""
    if choice not in QUANTIZATION_CHOICES:
        raise ConfigError(
            f"quantization '{choice}' is not one of {', '.join(QUANTIZATION_CHOICES)}."
        )
    gguf = path is not None and path.suffix == ".gguf"
    if choice == "auto":
        return "int4" if device.type == "cpu" and gguf and int4_supported() else "none"
    if choice == "int4":
        if device.type != "cpu":
            raise ConfigError(
                "quantization 'int4' is the CPU path (PyTorch's CPU int4 kernel); on "
                f"{device.type} use quantization 'none' (or 'auto')."
            )
        if not gguf:
            raise ConfigError(
                "quantization 'int4' keeps a GGUF file's Q4_0/Q4_1 weights quantized; the model "
                f"is not a GGUF file ({path or 'random weights'}). Use quantization 'none'."
            )
        if not int4_supported():
            raise ConfigError(
                "quantization 'int4': this PyTorch build has no CPU int4 kernel "
                "(_weight_int4pack_mm_for_cpu); use quantization 'none'."
            )
    return choice


def int4_supported() -> bool:
    """True when this PyTorch has the CPU int4 weight-only kernel and its packer."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(
        ops, "_convert_weight_to_int4pack_for_cpu"
    )


def q4_blocks(kind: str, raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """Codes (rows, cols) uint8 in 0..15, scales and zeros (rows, cols/32) float32 of a
    Q4_0/Q4_1 tensor's raw bytes, for the kernel's `(q - 8)*scale + zero`."""
    size = 18 if kind == _Q4_0 else 20
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, cols // GROUP, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., size - 16 :]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    if kind == _Q4_0:
        return codes, d, np.zeros_like(d)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return codes, d, m + 8.0 * d


class Int4Weight:
    """A linear weight packed for `_weight_int4pack_mm_for_cpu` (bfloat16 scales, zeros)."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        self.out_features = codes.shape[0]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.to(torch.int32).contiguous(), 2
        )
        # (groups, out_features, 2): the kernel's layout
        self.scales_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(torch.bfloat16)
        self.scales_zeros = self.scales_zeros.contiguous()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in_features) -> (rows, out_features) in x's dtype."""
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16), self.packed, GROUP, self.scales_zeros
        )
        return out.to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        """The weight as the kernel sees it, float32 (tests, error bounds)."""
        eye = torch.eye(int(self.scales_zeros.shape[0]) * GROUP, dtype=torch.bfloat16)
        return self.matmul(eye).t().float()


def _int4_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    quant: Int4Weight | Int8Weight = self.__dict__["_deploylab_int4"]
    rows = x.numel() // x.shape[-1]
    if rows > INT4_MAX_ROWS or torch.is_grad_enabled():
        float_forward: Callable[[torch.Tensor], torch.Tensor] = self.__dict__["_deploylab_float"]
        return float_forward(x)
    out = quant.matmul(x.reshape(rows, x.shape[-1]))
    if self.bias is not None:
        out = out + self.bias
    return out.view(*x.shape[:-1], quant.out_features)


class Int8Weight:
    """A linear weight as int8 with one scale per output row, for `_weight_int8pack_mm`
    (bfloat16 activations; the LM head, which a GGUF stores as Q8_0 and the float path
    reads as float32: two thirds of a decode step's weight bytes for the default model)."""

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.codes = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scales.to(torch.bfloat16)
        self.out_features = w.shape[0]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in_features) -> (rows, out_features) in x's dtype."""
        out = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.codes, self.scales)
        return out.to(x.dtype)


def int4_from_float(weight: torch.Tensor) -> Int4Weight:
    """A float weight re-quantized as Q4_1 does it: groups of `GROUP` inputs, each with a
    scale and a minimum (16 levels from the group's min to its max)."""
    w = weight.detach().float()
    groups = w.view(w.shape[0], -1, GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = (high - low).clamp(min=1e-12) / 15.0
    codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    return Int4Weight(codes.view_as(w), scale, low + 8.0 * scale)


def quantize_lm_head(model: nn.Module, kind: str = "int8") -> bool:
    """Give the model's LM head the int8 forward (rows scaled per output) or, `kind="int4"`,
    the int4 one (groups of 32); False if it has none or it is not a plain linear layer."""
    head = getattr(model, "lm_head", None)
    if type(head) is not nn.Linear or head.bias is not None:
        return False
    if kind == "int4" and head.in_features % GROUP:
        return False
    quant = int4_from_float(head.weight) if kind == "int4" else Int8Weight(head.weight)
    head.__dict__["_deploylab_int4"] = quant
    head.__dict__["_deploylab_float"] = head.forward
    head.forward = types.MethodType(_int4_forward, head)  # type: ignore[method-assign]
    return True


def quantize_from_gguf(model: nn.Module, path: Path) -> int:
    """Give each linear layer whose GGUF tensor is Q4_0/Q4_1 the int4 forward (codes taken from
    the file as they are); returns how many layers were switched."""
    from gguf import GGUFReader

    from deploylab.engine.models.gguf_loader import hf_name, unpermute_rotary

    config: Any = getattr(model, "config", None)
    modules = dict(model.named_modules())
    count = 0
    parts_of: dict[str, list[torch.Tensor]] = {}
    for t in GGUFReader(str(path)).tensors:
        kind = t.tensor_type.name
        name = hf_name(t.name)
        if kind not in (_Q4_0, _Q4_1) or name is None or not name.endswith(".weight"):
            continue
        layer = modules.get(name[: -len(".weight")])
        if type(layer) is not nn.Linear or layer.in_features % GROUP:
            continue
        rows, cols = layer.out_features, layer.in_features
        parts = [torch.from_numpy(a) for a in q4_blocks(kind, t.data, rows, cols)]
        heads = _rotary_heads(name, config)
        if heads:
            parts = [unpermute_rotary(p, heads) for p in parts]
        layer.__dict__["_deploylab_int4"] = Int4Weight(*parts)
        layer.__dict__["_deploylab_float"] = layer.forward
        layer.forward = types.MethodType(_int4_forward, layer)  # type: ignore[method-assign]
        parts_of[name[: -len(".weight")]] = parts
        count += 1
    _fuse_projections(modules, parts_of)
    return count


class _FusedInt4:
    """Several int4 linears of one input as one kernel call (q/k/v, gate/up): one cast of the
    input and one call instead of three, the outputs split as views. Each output column is
    computed as in its own layer's call, so the results are the same."""

    def __init__(self, layers: list[nn.Module], parts: list[list[torch.Tensor]]) -> None:
        self.layers = layers
        self.weight = Int4Weight(*(torch.cat(p) for p in zip(*parts, strict=True)))
        self.sizes = [int(p[0].shape[0]) for p in parts]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.is_grad_enabled():  # each layer's own forward (the float path under autograd)
            return tuple(layer(x) for layer in self.layers)
        out = self.weight.matmul(x.reshape(-1, x.shape[-1]))
        return tuple(o.view(*x.shape[:-1], -1) for o in out.split(self.sizes, dim=-1))


def _fuse_projections(
    modules: dict[str, nn.Module], parts_of: dict[str, list[torch.Tensor]]
) -> None:
    """Hand each attention (MLP) whose q/k/v (gate/up) are all int4 a fused projection."""
    groups = (("qkv_fn", ("q_proj", "k_proj", "v_proj")), ("gate_up_fn", ("gate_proj", "up_proj")))
    for name, module in modules.items():
        for attr, children in groups:
            keys = [f"{name}.{c}" for c in children]
            if hasattr(module, attr) and all(k in parts_of for k in keys):
                biased = any(getattr(module, c).bias is not None for c in children)
                if not biased:
                    layers = [getattr(module, c) for c in children]
                    setattr(module, attr, _FusedInt4(layers, [parts_of[k] for k in keys]))


def _rotary_heads(name: str, config: Any) -> int:
    """Heads whose rows llama.cpp permuted in this tensor (0: not permuted)."""
    if config is None or config.architecture not in ("LlamaForCausalLM", "MistralForCausalLM"):
        return 0
    if name.endswith("q_proj.weight"):
        return int(config.num_attention_heads)
    if name.endswith("k_proj.weight"):
        return int(config.num_key_value_heads)
    return 0


def is_int4(module: Any) -> bool:
    """True for a linear layer switched by `quantize_from_gguf`."""
    return isinstance(module, nn.Module) and "_deploylab_int4" in module.__dict__


def apply_quantization(
    engine_config: Any, model: nn.Module, device: torch.device, own: bool
) -> str:
    """The engine's hook: resolve `EngineConfig.quantization` and apply it to `model`;
    `own` is False when the caller passed the model in (its file is then unknown)."""
    method = _apply(engine_config, model, device, own)
    head = engine_config.lm_head_quantization
    if head != "int8" and method != "int4":
        raise ConfigError(
            f"lm_head_quantization '{head}' applies to the CPU's int4 path, but quantization "
            f"resolved to '{method}' here (it takes a CPU engine on a GGUF file with quantization "
            "auto or int4); drop --lm-head-quantization or change those."
        )
    return method


def _apply(engine_config: Any, model: nn.Module, device: torch.device, own: bool) -> str:
    from deploylab.catalog import resolve_model

    choice = engine_config.quantization
    path: Path | None = None
    if own and not engine_config.random_weights:
        path = Path(resolve_model(engine_config.model))
    if choice != "none" and engine_config.tensor_parallel_size > 1:
        if choice == "int4":
            raise ConfigError(
                "quantization 'int4' does not run under tensor parallelism; use "
                "--tensor-parallel-size 1 or --quantization none."
            )
        return "none"
    method = resolve_quantization(choice, device, path)
    if method == "int4" and path is not None:
        if quantize_from_gguf(model, path) == 0:
            if choice == "int4":
                raise ConfigError(
                    f"quantization 'int4': {path} has no Q4_0/Q4_1 linear weights to keep "
                    "quantized; use --quantization none."
                )
            return "none"
        quantize_lm_head(model, engine_config.lm_head_quantization)
    return method

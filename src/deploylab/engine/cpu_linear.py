"""Prepacked oneDNN weights for the model's `nn.Linear` layers on the CPU.

PyTorch's CPU `F.linear` reorders (packs) the weight for the matrix-multiply kernel on every
call, which costs most at the small row counts of decode steps and for the LM head. Packing
each weight once into oneDNN's blocked layout and calling oneDNN's linear directly measured
1.3-2x faster per call on our 2-vCPU dev VM (float32 and bfloat16, 16-64 rows). The modules
keep their parameters (state dicts, tied weights and other users see plain tensors); only
their `forward` is replaced on the instance. A weight that is replaced or changed in place is
repacked on its next call, so reloading weights stays correct.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_PACKABLE = (torch.float32, torch.bfloat16)
# Row-count hint for oneDNN's packing; measured insensitive between 16 and 512 rows.
_ROWS_HINT = 16


def prepack_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """True when oneDNN-packed linears can run for this device and dtype."""
    if device.type != "cpu" or dtype not in _PACKABLE or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def _version(t: torch.Tensor) -> int:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors keep no version counter
        return -1


class _Packed:
    """A weight's packed copy and what it was packed from."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.source = weight
        self.version = _version(weight)
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT)

    def current(self, weight: torch.Tensor) -> bool:
        return weight is self.source and _version(weight) == self.version


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    pack: _Packed | None = self.__dict__.get("_deploylab_pack")
    if (
        x.dtype != weight.dtype
        or x.device.type != "cpu"
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()  # a compiled graph (cpu_decode.py) packs its own way
    ):
        return F.linear(x, weight, self.bias)
    if pack is None or not pack.current(weight):
        pack = _Packed(weight)
        self.__dict__["_deploylab_pack"] = pack
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1:
        # oneDNN rounds a one-row product differently from the same row among others (K =
        # 1536 measured); two rows cost the same (memory-bound) and keep every row's result
        # independent of its batch, so a speculative verify row equals its decode row.
        rows = rows.expand(2, -1).contiguous()
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
        rows, pack.packed, self.bias, "none", [], ""
    )
    return out[: lead.numel()].view(*lead, out.shape[-1])


def prepack_linears(model: nn.Module) -> int:
    """Give every `nn.Linear` of `model` a packed weight and the packed forward; returns how
    many layers were switched. Call only when `prepack_supported` is True."""
    count = 0
    for module in model.modules():
        quantized = "_deploylab_int4" in module.__dict__  # keeps its int4/int8 forward
        if type(module) is nn.Linear and "_deploylab_pack" not in module.__dict__ and not quantized:
            module.__dict__["_deploylab_pack"] = _Packed(module.weight)
            module.forward = types.MethodType(_packed_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def unpack_linears(model: nn.Module) -> None:
    """Undo `prepack_linears`: plain `F.linear` again, packed copies freed."""
    for module in model.modules():
        if "_deploylab_pack" in module.__dict__:
            del module.__dict__["_deploylab_pack"]
            module.__dict__.pop("forward", None)


def is_prepacked(module: Any) -> bool:
    """True for a linear layer switched by `prepack_linears`."""
    return isinstance(module, nn.Module) and "_deploylab_pack" in module.__dict__

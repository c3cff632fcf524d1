"""Grouped kernels for one anti-diagonal: G decoder layers, each on its own segment.

All segments of a step have the same padded length, so a group is a dense `[G, N, K]` batch
and every projection is a batched GEMM against a contiguous slice of the weight stacks.
Two GEMM backends: `bmm` (cuBLAS strided-batched) and `grouped_mm` (`torch._grouped_mm`,
CUTLASS grouped GEMM on Hopper). The rest — RMSNorm, RoPE, SDPA — uses the engine's own
functions or its arithmetic, broadcast over the group.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from deploylab.armt.model import ARMTModel
from deploylab.engine.models.rope import apply_rotary
from deploylab.errors import UsageError

GroupedBackend = Literal["bmm", "grouped_mm"]
BACKENDS: tuple[GroupedBackend, ...] = ("bmm", "grouped_mm")


def check_backend(name: str) -> GroupedBackend:
    """`name` as a backend; UsageError lists the choices or says why one is missing."""
    if name not in BACKENDS:
        raise UsageError(f"Unknown grouped-GEMM backend '{name}'. Choose one of: bmm, grouped_mm.")
    if name == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        raise UsageError(
            f"torch {torch.__version__} has no torch._grouped_mm; use --grouped-backend bmm."
        )
    return name  # type: ignore[return-value]


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    backend: GroupedBackend,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[g] = residual[g] + x[g] @ weight[g]ᵀ + bias[g] for x `[G, N, K]`, weight `[G, O, K]`
    (residual `[G, N, O]` and bias `[G, O]` optional). With `bmm`, the residual is added by
    the GEMM itself (`baddbmm`)."""
    if backend == "grouped_mm":
        y = torch._grouped_mm(x, weight.transpose(-2, -1))
        if bias is not None:
            y = y + bias.unsqueeze(1)
        return y if residual is None else residual + y
    if residual is None and bias is None:
        return torch.bmm(x, weight.transpose(-2, -1))
    if residual is not None and bias is not None:
        residual = residual + bias.unsqueeze(1)
    base = residual if residual is not None else bias.unsqueeze(1)  # type: ignore[union-attr]
    return torch.baddbmm(base, x, weight.transpose(-2, -1))


def grouped_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with a per-group weight `[G, D]` for x `[G, ..., D]` (the engine's RMSNorm,
    through PyTorch's fused kernel: statistics in float32, result in x's dtype, times w)."""
    h = F.rms_norm(x, (x.shape[-1],), eps=eps)
    w = weight.view(weight.shape[0], *([1] * (x.dim() - 2)), weight.shape[-1])
    return w * h


def _bias(stack: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if stack is None else stack[sl]


def grouped_decoder_layers(
    model: ARMTModel,
    x: torch.Tensor,
    sl: slice,
    cos: torch.Tensor,
    sin: torch.Tensor,
    backend: GroupedBackend,
) -> torch.Tensor:
    """Decoder layers `sl` (G of them), layer g on segment x[g]: `[G, B, T, D]` in and out.
    Same math as the engine's `LlamaDecoderLayer`, causal attention within each segment."""
    p = model.packed
    cfg = model.llama_config
    g, b, t, d = x.shape
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    flat = x.reshape(g, b * t, d)

    a = grouped_rms_norm(flat, p.ln1[sl], eps)
    qkv = grouped_linear(a, p.qkv[sl], _bias(p.qkv_bias, sl), backend)
    q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    q = q.reshape(g, b * t, heads, hd)
    k = k.reshape(g, b * t, kv_heads, hd)
    if p.q_norm is not None and p.k_norm is not None:
        q = grouped_rms_norm(q, p.q_norm[sl], eps)
        k = grouped_rms_norm(k, p.k_norm[sl], eps)
    q = apply_rotary(q.reshape(g * b, t, heads, hd), cos, sin)
    k = apply_rotary(k.reshape(g * b, t, kv_heads, hd), cos, sin)
    v = v.reshape(g * b, t, kv_heads, hd)
    o = model.layers[0].self_attn.dense_attention(q, k, v)  # causal SDPA, GQA
    o = o.reshape(g, b * t, heads * hd)
    flat = grouped_linear(o, p.o[sl], _bias(p.o_bias, sl), backend, residual=flat)

    a = grouped_rms_norm(flat, p.ln2[sl], eps)
    gu = grouped_linear(a, p.gate_up[sl], _bias(p.gate_up_bias, sl), backend)
    gate, up = gu.chunk(2, dim=-1)
    act = F.silu(gate) * up
    flat = grouped_linear(act, p.down[sl], _bias(p.down_bias, sl), backend, residual=flat)
    return flat.view(g, b, t, d)

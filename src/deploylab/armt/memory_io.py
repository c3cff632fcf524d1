"""Memory read and write on projected hidden states, for one layer or a group of layers.

`layers` is an int (one layer: tensors `[B, ...]`) or a slice (a group: `[G, B, ...]`); the
same code serves both executors, so they cannot drift apart.
"""

from __future__ import annotations

import torch

from deploylab.armt.memory import MemoryState, feature_map, memory_read_add, memory_write
from deploylab.armt.model import ARMTModel


def read_memory(
    x: torch.Tensor,
    q_proj: torch.Tensor,
    state: MemoryState,
    layers: int | slice,
    model: ARMTModel,
) -> torch.Tensor:
    """h + (φ(q) W_mem) / (z·φ(q) + ε) for hidden states x `[..., T, D]` and their query
    projection `q_proj` `[..., T, d_mem]` (W_mq h), in x's dtype."""
    cfg = model.config
    q = feature_map(q_proj, cfg.nu, cfg.normalize_features)
    return memory_read_add(x, q, state.w_mem[layers], state.z[layers], cfg.eps)


def write_memory(
    proj: torch.Tensor, state: MemoryState, layers: int | slice, model: ARMTModel
) -> None:
    """Apply one write to `state[layers]` from the fused projection `proj` `[..., M, rows]`
    of the memory-token outputs: W_mk m, W_mv m, the β logit, then zero padding."""
    cfg = model.config
    d_model = model.llama_config.hidden_size
    k = feature_map(proj[..., : cfg.d_mem], cfg.nu, cfg.normalize_features)
    v = proj[..., cfg.d_mem : cfg.d_mem + d_model]
    beta = torch.sigmoid(proj[..., cfg.d_mem + d_model : cfg.d_mem + d_model + 1].float())
    w_new, z_new = memory_write(k, v, beta, state.w_mem[layers], state.z[layers], cfg.eps)
    state.w_mem[layers] = w_new
    state.z[layers] = z_new

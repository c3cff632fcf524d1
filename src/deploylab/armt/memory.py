"""Associative memory math of ARMT: the DPFP feature map, read and write.

Every function works on any leading batch dimensions, so the sequential executor calls them
for one layer (`[B, ...]`) and the diagonal executor for a group of layers (`[G, B, ...]`).
The memory state is kept in float32 whatever the model dtype: it is a running sum over all
segments, and bf16 would lose the small late updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Keeps ‖k‖² away from 0 in the write correction γ (an all-zero key then gets γ·k = 0).
_TINY = 1e-12


def dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Deterministic parameter-free projection: with r = [relu(x), relu(-x)] (width 2d), the
    products r · roll(r, j) for j = 1..nu, concatenated (width 2·nu·d)."""
    r = torch.cat((F.relu(x), F.relu(-x)), dim=-1)
    return torch.cat([r * torch.roll(r, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)


def feature_map(x: torch.Tensor, nu: int, normalize: bool) -> torch.Tensor:
    """φ(x): DPFP in float32, optionally L2-normalised on the last dimension."""
    phi = dpfp(x.float(), nu)
    return F.normalize(phi, p=2.0, dim=-1) if normalize else phi


@dataclass
class MemoryState:
    """The associative memories of all layers: W_mem `[L, B, d_key, d_model]` and the
    normaliser z `[L, B, d_key]`, both float32."""

    w_mem: torch.Tensor
    z: torch.Tensor

    @classmethod
    def zeros(
        cls, num_layers: int, batch: int, d_key: int, d_model: int, device: torch.device
    ) -> MemoryState:
        """Empty memories (the state before the first segment)."""
        return cls(
            w_mem=torch.zeros(num_layers, batch, d_key, d_model, device=device),
            z=torch.zeros(num_layers, batch, d_key, device=device),
        )


def memory_read(q: torch.Tensor, w_mem: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """(q W_mem) / (z·q + ε) for features q `[..., T, d_key]`, W_mem `[..., d_key, D]`,
    z `[..., d_key]`; returns `[..., T, D]` in float32."""
    num = torch.matmul(q, w_mem)
    den = torch.matmul(q, z.unsqueeze(-1)) + eps
    return num / den


def memory_read_add(
    x: torch.Tensor, q: torch.Tensor, w_mem: torch.Tensor, z: torch.Tensor, eps: float
) -> torch.Tensor:
    """x + (q W_mem) / (z·q + ε) in x's dtype, as one batched GEMM with the residual fused:
    the per-row denominator is folded into q first, ((q / (z·q + ε)) W_mem). x `[..., T, D]`,
    q `[..., T, d_key]` float32; W_mem and z as in `memory_read`."""
    den = torch.matmul(q, z.unsqueeze(-1)) + eps
    q_scaled = (q / den).to(x.dtype)
    lead = x.shape[:-2]
    x3 = x.reshape(-1, *x.shape[-2:])
    w3 = w_mem.to(x.dtype).reshape(-1, *w_mem.shape[-2:])
    out = torch.baddbmm(x3, q_scaled.reshape(-1, *q.shape[-2:]), w3)
    return out.view(*lead, *x.shape[-2:])


def memory_write(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    w_mem: torch.Tensor,
    z: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One write of M associations; returns the new (W_mem, z).

    k `[..., M, d_key]` (features), v `[..., M, D]`, beta `[..., M, 1]`:
    v̄ = (k W_mem)/(z·k + ε); W_mem += Σ β k ⊗ (v − v̄);
    z += Σ γ k with γ = clip(1 − z·k/‖k‖², 0, 1) (z·k uses z before this write).
    """
    v_bar = memory_read(k, w_mem, z, eps)
    new_w = w_mem + torch.matmul((beta * k).transpose(-1, -2), v.float() - v_bar)
    zk = torch.matmul(k, z.unsqueeze(-1))
    k_sq = k.pow(2).sum(dim=-1, keepdim=True).clamp_min(_TINY)
    gamma = (1.0 - zk / k_sq).clamp(0.0, 1.0)
    new_z = z + (gamma * k).sum(dim=-2)
    return new_w, new_z

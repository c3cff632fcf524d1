"""Rotary position embeddings (RoPE) in the Hugging Face "rotate half" layout.

`cos`/`sin` are computed from positions on the fly (a few FLOPs per token), so the same code
serves paged batches (positions `[T]`) and dense batches (positions `[B, S]`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deploylab.engine.models.config import LlamaConfig
from deploylab.errors import UnsupportedArchitectureError


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta ** (-2i / d) for i in [0, d/2), in float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (theta**exponents)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, float]) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths divided by `factor`, short ones kept,
    a smooth blend in between."""
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def compute_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies for `config`, with its rope scaling applied."""
    inv_freq = default_inv_freq(config.head_dim, config.rope_theta)
    if config.rope_freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(config.rope_freq_factors, dtype=torch.float32)
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "llama3":
        return llama3_inv_freq(inv_freq, scaling)
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    raise UnsupportedArchitectureError(
        f"RoPE scaling type '{rope_type}' is not supported (supported: default, linear, llama3)."
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [..., heads, head_dim] by `cos`/`sin` [..., head_dim] (broadcast over heads)."""
    cos = cos.unsqueeze(-2)
    sin = sin.unsqueeze(-2)
    return (x * cos) + (rotate_half(x) * sin)


class RotaryEmbedding(nn.Module):
    """Maps positions to (cos, sin) of shape positions.shape + [head_dim]."""

    inv_freq: torch.Tensor

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", compute_inv_freq(config), persistent=False)
        # Optional (cos, sin) of every position, `[max_positions, 2, head_dim]` (`use_table`).
        self.table: torch.Tensor | None = None

    def reset_parameters(self) -> None:
        """Recompute the frequencies (after the module was materialised from `meta`)."""
        self.inv_freq = compute_inv_freq(self.config).to(self.inv_freq.device)
        self.table = None

    def use_table(self, max_positions: int, dtype: torch.dtype) -> None:
        """Precompute (cos, sin) for positions `[0, max_positions)` in `dtype`, so a forward
        is one gather instead of six small ops (the GPU waits on those at a step's start).
        The values are the ones `forward` computes."""
        positions = torch.arange(max_positions, device=self.inv_freq.device)
        cos, sin = self._compute(positions, dtype)
        self.table = torch.stack((cos, sin), dim=1)

    def _compute(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].to(torch.float32) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.table
        if table is None or table.dtype != dtype or positions.dim() != 1:
            return self._compute(positions, dtype)
        both = table.index_select(0, positions)  # positions past the table fail here
        return both[:, 0], both[:, 1]

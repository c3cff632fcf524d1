"""`ARMTModel`: the engine's Llama plus ARMT memory tokens and per-layer memory projections.

The decoder layers, embeddings, final norm, rotary embedding and LM head are the engine's own
modules (`deploylab.engine.models`); this module adds only what ARMT learns on top:
memory-token embeddings and, per layer, W_mq, W_mk, W_mv and W_mb, stacked over layers so
that both executors can slice them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deploylab.armt.config import ARMTConfig
from deploylab.armt.packed import PackedLayers, pack_layers
from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.llama import LlamaDecoderLayer, LlamaForCausalLM


class MemoryParams(nn.Module):
    """ARMT's learned parameters, stacked over layers.

    `w_write` holds W_mk (d_mem rows), W_mv (D rows) and W_mb (1 row) of each layer, so one
    GEMM per layer (or per group of layers) projects the memory-token outputs for a write;
    `b_write` is its bias, zero except the W_mb entry. Rows are padded with zeros to a
    multiple of 8, which keeps GEMM outputs 16-byte aligned (needed by `torch._grouped_mm`).
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        config: ARMTConfig,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        rows = -(-(config.d_mem + d_model + 1) // 8) * 8

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device), False)

        self.w_mq = param(num_layers, config.d_mem, d_model)
        self.w_write = param(num_layers, rows, d_model)
        self.b_write = param(num_layers, rows)
        self.mem_tokens = param(config.num_mem_tokens, d_model)

    @torch.no_grad()
    def initialise(self, config: ARMTConfig, embed_std: float) -> None:
        """Fresh parameters: normal(0, init_std) projections, W_mv zero or normal as the
        config says, memory tokens normal(0, std of the token embeddings)."""
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        std = config.init_std

        def normal(shape: torch.Size, scale: float) -> torch.Tensor:
            return torch.randn(shape, generator=gen) * scale

        self.w_mq.copy_(normal(self.w_mq.shape, std))
        w_write = normal(self.w_write.shape, std)
        d_model = self.w_write.shape[-1]
        if config.w_mv_init == "zero":
            w_write[:, config.d_mem : config.d_mem + d_model] = 0.0
        w_write[:, config.d_mem + d_model + 1 :] = 0.0
        self.w_write.copy_(w_write)
        self.b_write.zero_()
        self.mem_tokens.copy_(normal(self.mem_tokens.shape, embed_std))


class ARMTModel(nn.Module):
    """A Llama-family model (the engine's `LlamaForCausalLM`) run as an ARMT.

    The base model's layer weights are re-packed into per-kind stacks (see `packed.py`); the
    base model stays usable on its own, e.g. as the full-attention baseline.
    """

    def __init__(self, base: LlamaForCausalLM, config: ARMTConfig) -> None:
        super().__init__()
        self.base = base
        self.config = config
        weight = base.model.embed_tokens.weight
        self.memory = MemoryParams(
            len(base.model.layers), base.config.hidden_size, config, weight.dtype, weight.device
        )
        self.memory.initialise(config, embed_std=float(weight.float().std()))
        self.packed: PackedLayers = pack_layers(self.layers)

    @property
    def llama_config(self) -> LlamaConfig:
        """The base model's config."""
        return self.base.config

    @property
    def layers(self) -> list[LlamaDecoderLayer]:
        """The engine's decoder layers."""
        return [m for m in self.base.model.layers if isinstance(m, LlamaDecoderLayer)]

    @property
    def device(self) -> torch.device:
        return self.base.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.model.embed_tokens.weight.dtype

    def segment_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Layer-0 input of one segment: token embeddings then the memory tokens,
        `[B, n + M, D]`."""
        tokens = self.base.model.embed_tokens(input_ids)
        mem = self.memory.mem_tokens.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        return torch.cat((tokens, mem), dim=1)

    def rotary(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[length, head_dim]` for positions 0..length−1 (positions restart in every
        segment, memory tokens right after the segment's tokens)."""
        positions = torch.arange(length, device=self.device)
        return self.base.model.rotary_emb(positions, self.dtype)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of final (normed) hidden states."""
        return self.base.compute_logits(hidden)


def load_armt(
    model: str | Path,
    config: ARMTConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ARMTModel:
    """An ARMT on a Llama checkpoint (catalog name, GGUF file or HF directory), loaded by the
    engine's loader, with freshly initialised memory parameters."""
    from deploylab.catalog import resolve_model
    from deploylab.engine.models.loader import load_model

    path = resolve_model(str(model))
    base, _ = load_model(path, dtype, torch.device(device))
    return ARMTModel(base, config)


def random_armt(
    shape: str | LlamaConfig,
    config: ARMTConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> ARMTModel:
    """An ARMT on a random-weight Llama of a named engine preset (e.g. "llama-3.2-1b") or of
    an explicit `LlamaConfig`."""
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    llama = get_preset(shape) if isinstance(shape, str) else shape
    base = init_random_model(llama, dtype=dtype, device=device, seed=seed)
    return ARMTModel(base, config)

"""A Llama-family decoder in plain PyTorch, usable on the paged KV cache or densely.

Parameter names match Hugging Face (`model.layers.0.self_attn.q_proj.weight`, ...), so HF
safetensors load by name. Two ways to run a layer:

- paged (the engine): hidden states `[T, hidden]` for a step's flattened tokens, positions
  `[T]`, plus an `AttentionMetadata` and the layer's `(k_cache, v_cache)`;
- dense (tests, ARMT): hidden states `[B, S, hidden]`, positions `[B, S]`, causal SDPA over
  the given tokens only (or an explicit `attention_mask`), no cache.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from deploylab.engine import gpu_kernels
from deploylab.engine.attention import AttentionMetadata, paged_attention
from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.rope import RotaryEmbedding, apply_rotary

KVPair = tuple[torch.Tensor, torch.Tensor]
# Per-row adapter corrections, passed in by the runtime: `lora(x, y, modules)` returns `y`
# (the concatenated outputs of the linear `modules` for input `x`) plus each row's LoRA delta.
# `y` may be a thunk computing those outputs, so the runtime can start work beside it.
LoraFn = Callable[
    [torch.Tensor, torch.Tensor | Callable[[], torch.Tensor], tuple[nn.Linear, ...]], torch.Tensor
]
# A fused projection passed in by the runtime (the CPU int4 path): `fn(x)` returns the outputs
# of several linear layers of the same input in one call, e.g. (q, k, v) or (gate, up).
ProjectFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
# SDPA backends for the CUDA path, flash first: cuDNN attention costs 1.6-2.6 ms of CPU per
# call in PyTorch 2.11 (measured on H100), which made the engine's steps CPU-bound.
CUDA_SDPA_PRIORITY = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def fuse_linears(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights (and biases) of `layers` stacked into one, for a single GEMM. The layers'
    parameters become views of it, so state dicts and tied users see no change and no second
    copy is kept; the fused tensors are plain attributes (not in the state dict)."""
    weight = torch.cat([layer.weight.detach() for layer in layers])
    bias = None
    if layers[0].bias is not None:
        bias = torch.cat([layer.bias.detach() for layer in layers])  # type: ignore[misc]
    start = 0
    for layer in layers:
        n = layer.out_features
        layer.weight = nn.Parameter(weight[start : start + n], requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return weight, bias


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 like the reference implementation."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps)
        return self.weight * h.to(dtype)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

        # Stacked gate/up weights, set by `LlamaForCausalLM.fuse_for_cuda`.
        self.gate_up_weight: torch.Tensor | None = None
        self.gate_up_bias: torch.Tensor | None = None
        self.gate_up_fn: ProjectFn | None = None  # (gate, up) in one call, from the runtime

    def forward(self, x: torch.Tensor, lora: LoraFn | None = None) -> torch.Tensor:
        if lora is not None:
            return self._forward_lora(x, lora)
        if self.gate_up_fn is not None:
            gate, up = self.gate_up_fn(x)
            return self.down_proj(F.silu(gate) * up)
        if self.gate_up_weight is not None:
            gate_up = F.linear(x, self.gate_up_weight, self.gate_up_bias)
            return self.down_proj(gpu_kernels.silu_mul(gate_up))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def _forward_lora(self, x: torch.Tensor, lora: LoraFn) -> torch.Tensor:
        if self.gate_up_weight is not None:
            gate_up = partial(F.linear, x, self.gate_up_weight, self.gate_up_bias)
            h = gpu_kernels.silu_mul(lora(x, gate_up, (self.gate_proj, self.up_proj)))
        else:
            gate = lora(x, self.gate_proj(x), (self.gate_proj,))
            h = F.silu(gate) * lora(x, self.up_proj(x), (self.up_proj,))
        return lora(h, partial(self.down_proj, h), (self.down_proj,))


class LlamaAttention(nn.Module):
    """Multi-head attention with GQA, RoPE, optional q/k/v bias and q/k RMSNorm (Qwen3)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d = config.head_dim
        self.scale = d**-0.5
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, hidden, bias=config.o_bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        # Stacked q/k/v weights, set by `LlamaForCausalLM.fuse_for_cuda`.
        self.qkv_weight: torch.Tensor | None = None
        self.qkv_bias: torch.Tensor | None = None
        self.qkv_fn: ProjectFn | None = None  # (q, k, v) in one call, from the runtime
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def project_qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lora: LoraFn | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q `[..., H, d]`, k and v `[..., kv_heads, d]`, with norms and RoPE applied."""
        lead = x.shape[:-1]
        if self.qkv_fn is not None and lora is None:
            q, k, v = self.qkv_fn(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if lora is not None:
            q = lora(x, q, (self.q_proj,))
            k = lora(x, k, (self.k_proj,))
            v = lora(x, v, (self.v_proj,))
        q = q.view(*lead, self.num_heads, self.head_dim)
        k = k.view(*lead, self.num_kv_heads, self.head_dim)
        v = v.view(*lead, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward_fused(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: KVPair,
    ) -> torch.Tensor:
        """The paged CUDA path: one GEMM for q/k/v, then one Triton kernel applies RoPE and
        stores the keys/values in the cache (Qwen3's q/k norms take the plain path)."""
        assert self.qkv_weight is not None
        tokens, d = x.shape[0], self.head_dim
        if attn.lora is None:
            qkv = F.linear(x, self.qkv_weight, self.qkv_bias)
        else:
            base = partial(F.linear, x, self.qkv_weight, self.qkv_bias)
            qkv = attn.lora(x, base, (self.q_proj, self.k_proj, self.v_proj))
        qkv = qkv.view(tokens, -1, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
            q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            o = paged_attention(q, k, v.contiguous(), kv_cache[0], kv_cache[1], attn, self.scale)
        else:
            slots = attn.write_index[:tokens]  # the first KV head's rows are the slots
            # Prefill attends to contiguous fresh keys/values (SDPA; the prefill kernel when
            # every chunk is a whole prompt), else the kernel reads the cache.
            batch = attn.prefill_batch
            want_kv = bool(attn.prefills) and (batch is None or batch.fresh)
            q, k, v = gpu_kernels.rope_and_store(
                qkv, cos, sin, kv_cache, slots, self.num_heads, want_kv
            )
            o = paged_attention(q, k, v, kv_cache[0], kv_cache[1], attn, self.scale)
        o = o.view(tokens, -1)
        if attn.lora is None:  # a module call: tensor parallelism swaps in a row-parallel layer
            return self.o_proj(o)
        return attn.lora(o, partial(self.o_proj, o), (self.o_proj,))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata | None = None,
        kv_cache: KVPair | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lora = attn.lora if attn is not None else None
        q, k, v = self.project_qkv(x, cos, sin, lora)
        if attn is not None:
            if kv_cache is None:
                raise ValueError("paged attention needs the layer's kv_cache")
            o = paged_attention(q, k, v, kv_cache[0], kv_cache[1], attn, self.scale)
        else:
            o = self.dense_attention(q, k, v, attention_mask)
        o = o.reshape(*x.shape[:-1], self.num_heads * self.head_dim)
        return self.o_proj(o) if lora is None else lora(o, self.o_proj(o), (self.o_proj,))

    def dense_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SDPA over `[B, S, heads, d]` tensors; causal unless `attention_mask` is given
        (bool, True = attend, or additive float; broadcastable to `[B, H, S, S]`)."""
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attention_mask,
            is_causal=attention_mask is None,
            scale=self.scale,
            enable_gqa=True,
        )
        return o.transpose(1, 2)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata | None = None,
        kv_cache: KVPair | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, attn, kv_cache, attention_mask)
        return h + self.mlp(
            self.post_attention_layernorm(h), attn.lora if attn is not None else None
        )

    def forward_fused(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: KVPair,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paged CUDA path: `x` is the previous layer's output and `residual` the stream
        before it (None for the first layer); the residual adds ride inside the norms."""
        n1, n2 = self.input_layernorm, self.post_attention_layernorm
        if residual is None:
            residual = x.clone()
            h = gpu_kernels.rmsnorm(x, n1.weight, n1.eps)
        else:
            h = gpu_kernels.rmsnorm(x, n1.weight, n1.eps, residual)
        h = self.self_attn.forward_fused(h, cos, sin, attn, kv_cache)
        h = gpu_kernels.rmsnorm(h, n2.weight, n2.eps, residual)
        return self.mlp(h, attn.lora), residual


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.fused = False  # Triton fused ops and projections (`LlamaForCausalLM.fuse_for_cuda`)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        attn: AttentionMetadata | None = None,
        kv_caches: list[KVPair] | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)
        h = inputs_embeds
        cos, sin = self.rotary_emb(positions, h.dtype)
        if self.fused and attn is not None and kv_caches is not None:
            return self._forward_fused(h, cos, sin, attn, kv_caches)
        for i, layer in enumerate(self.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            h = layer(h, cos, sin, attn, cache, attention_mask)
        return self.norm(h)

    def _forward_fused(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[KVPair],
    ) -> torch.Tensor:
        residual: torch.Tensor | None = None
        # Without q/k norms, the RoPE kernel stores each layer's keys/values itself.
        attn.kv_written = not self.config.qk_norm
        with sdpa_kernel(CUDA_SDPA_PRIORITY, set_priority=True):
            for layer, cache in zip(self.layers, kv_caches, strict=True):
                assert isinstance(layer, LlamaDecoderLayer)
                h, residual = layer.forward_fused(h, residual, cos, sin, attn, cache)
        assert residual is not None
        return gpu_kernels.rmsnorm(h, self.norm.weight, self.norm.eps, residual)


class LlamaForCausalLM(nn.Module):
    """The decoder plus the LM head (tied to the embeddings when the config says so)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        attn: AttentionMetadata | None = None,
        kv_caches: list[KVPair] | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (call `compute_logits` on the rows you need)."""
        return self.model(input_ids, positions, attn, kv_caches, attention_mask, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for hidden states `[..., hidden]`."""
        return self.lm_head(hidden).float()

    def fuse_for_cuda(self) -> bool:
        """Switch the paged path to fused projections and Triton small ops (CUDA, half
        precision, head_dim a power of two). Returns whether it did."""
        if self.model.fused:
            return True
        d = self.config.head_dim
        param = self.lm_head.weight
        if param.device.type != "cuda" or param.dtype not in (torch.bfloat16, torch.float16):
            return False
        if d & (d - 1):
            return False
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        for layer in self.model.layers:
            assert isinstance(layer, LlamaDecoderLayer)
            a, m = layer.self_attn, layer.mlp
            a.qkv_weight, a.qkv_bias = fuse_linears([a.q_proj, a.k_proj, a.v_proj])
            m.gate_up_weight, m.gate_up_bias = fuse_linears([m.gate_proj, m.up_proj])
        self.model.fused = True
        return True

    def tie_weights(self) -> None:
        """Re-point the LM head at the embeddings (after weights were replaced)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

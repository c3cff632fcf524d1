"""What a forward pass of a Llama-family model must move and compute (roofline inputs).

Decode is memory-bound: a step reads every weight once plus the keys and values of every
sequence's context. Prefill is compute-bound: two FLOPs per weight per token in the linear
layers, plus the attention score and value products.
"""

from __future__ import annotations

from collections.abc import Iterable

from deploylab.engine.models.config import LlamaConfig


def layer_params(config: LlamaConfig) -> int:
    """Parameters of the linear layers of one decoder layer (norms and biases excluded)."""
    h, d = config.hidden_size, config.head_dim
    q = h * config.num_attention_heads * d
    kv = 2 * h * config.num_key_value_heads * d
    o = config.num_attention_heads * d * h
    mlp = 3 * h * config.intermediate_size
    return q + kv + o + mlp


def param_count(config: LlamaConfig) -> int:
    """All parameters, a tied embedding counted once."""
    h = config.hidden_size
    per_layer = layer_params(config) + 2 * h  # two RMSNorm weights
    if config.qkv_bias:
        per_layer += (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim
    if config.qk_norm:
        per_layer += 2 * config.head_dim
    embed = config.vocab_size * h
    head = 0 if config.tie_word_embeddings else embed
    return config.num_hidden_layers * per_layer + embed + head + h


def kv_bytes_per_token(config: LlamaConfig, elem_bytes: int) -> int:
    """Keys plus values of one token over all layers."""
    kv = config.num_key_value_heads * config.head_dim
    return 2 * config.num_hidden_layers * kv * elem_bytes


def decode_step_bytes(config: LlamaConfig, elem_bytes: int, context_lens: Iterable[int]) -> int:
    """The fewest bytes a decode step must read: each weight once (the LM head in full, the
    embedding only for the batch's rows, which is negligible) and every context's KV."""
    h = config.hidden_size
    weights = config.num_hidden_layers * (layer_params(config) + 2 * h) + h
    weights += config.vocab_size * h  # the LM head (the tied embedding read once)
    kv = sum(context_lens) * kv_bytes_per_token(config, elem_bytes)
    return weights * elem_bytes + kv


def prefill_flops(config: LlamaConfig, tokens: int, cached: int = 0) -> int:
    """FLOPs of a causal prefill of `tokens` new tokens after `cached` ones, logits for the
    last token only (what the engine computes)."""
    linear = 2 * config.num_hidden_layers * layer_params(config) * tokens
    # q.k and p.v: 2 FLOPs per multiply-add, over the causal triangle (plus the cached part).
    pairs = tokens * cached + tokens * (tokens + 1) // 2
    attn = 2 * 2 * pairs * config.num_attention_heads * config.head_dim * config.num_hidden_layers
    head = 2 * config.hidden_size * config.vocab_size
    return linear + attn + head

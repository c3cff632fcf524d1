"""A transformers `LlamaForCausalLM` sharing a deploylab model's weights (baselines, checks)."""

from __future__ import annotations

from typing import Any

import torch

from deploylab.engine.models.llama import LlamaForCausalLM


def transformers_twin(model: LlamaForCausalLM, **config_overrides: Any) -> Any:
    """transformers' Llama built from `model`'s config, holding the same tensors (not copies);
    `config_overrides` go to `transformers.LlamaConfig` (e.g. token ids)."""
    import transformers

    c = model.config
    rope: dict[str, Any] = dict(c.rope_scaling or {"rope_type": "default"})
    rope["rope_theta"] = c.rope_theta
    settings: dict[str, Any] = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=rope,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=c.qkv_bias,
    )
    settings.update(config_overrides)
    config = transformers.LlamaConfig(**settings)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict(dict(model.state_dict()), assign=True, strict=False)
    hf.tie_weights()
    device = next(model.parameters()).device
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config).to(device)
    return hf.eval()

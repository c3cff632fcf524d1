"""A tiny random Qwen3 checkpoint on disk, shared by the tensor-parallel engine and server
tests: 4 query / 2 KV heads, q/k norms, an odd vocabulary (101 rows, so the last rank's
vocabulary slice is padded)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_qwen3(directory: Path) -> Path:
    """Write the checkpoint (config.json + safetensors, no tokenizer) to `directory`."""
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():  # non-trivial norms, so a norm applied to the wrong heads shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(directory)
    return directory

"""Named model shapes for random-weight models (tests, GPU benchmarks without weight files)."""

from __future__ import annotations

from deploylab.engine.models.config import LlamaConfig
from deploylab.errors import ModelNotFoundError


def _llama3_rope(factor: float) -> dict[str, object]:
    """Llama 3.1/3.2's "llama3" RoPE scaling (8k original context) with this factor."""
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


def _llama3(
    hidden: int, intermediate: int, layers: int, heads: int, head_dim: int, rope_factor: float,
    tie: bool = False,
) -> LlamaConfig:  # fmt: skip
    """A Llama 3.x shape: the family's vocabulary, RoPE, context and special tokens."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=head_dim,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=_llama3_rope(rope_factor),
        max_position_embeddings=131072,
        tie_word_embeddings=tie,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
    )


_TINY = LlamaConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
    initializer_range=0.1,
    eos_token_ids=(2,),
)


PRESETS: dict[str, LlamaConfig] = {
    "llama-3.2-1b": _llama3(2048, 8192, 16, 32, 64, rope_factor=32.0, tie=True),
    # Llama-3.1-8B and -70B shapes (tensor-parallel benchmarks; 8 KV heads split over 2-8 GPUs).
    "llama-3.1-8b": _llama3(4096, 14336, 32, 32, 128, rope_factor=8.0),
    "llama-3.1-70b": _llama3(8192, 28672, 80, 64, 128, rope_factor=8.0),
    "smollm2-135m": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_ids=(2,),
    ),
    "tiny": _TINY,
    # The Llama-3.2-1B shape's depth and context at `tiny`'s widths: the host-side cost of
    # long sessions (block tables, tier lookups) measured on a CPU in seconds.
    "tiny-deep": _TINY.with_updates(num_hidden_layers=16, max_position_embeddings=131072),
}


def get_preset(name: str) -> LlamaConfig:
    """The preset called `name`; ModelNotFoundError lists the known ones."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ModelNotFoundError(
            f"Unknown random-weight shape '{name}'. Known shapes: {known}."
        ) from None

"""`LlamaConfig`: the shape and options of a Llama-family decoder, read from an HF config dict.

One dataclass covers Llama 2/3 (incl. llama3 rope scaling), SmolLM2, Mistral without sliding
window, Qwen2/2.5 (bias on q/k/v) and Qwen3 (RMSNorm on q and k per head).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from deploylab.errors import ModelLoadError

# HF `architectures` entries this decoder implements, with their per-family defaults.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"qkv_bias": True, "o_bias": False},
    "Qwen3ForCausalLM": {"qk_norm": True},
}

MODEL_TYPE_TO_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder (names follow Hugging Face)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    architecture: str = "LlamaForCausalLM"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # {"rope_type": "llama3" | "linear" | "default", ...} as in HF configs.
    rope_scaling: dict[str, Any] | None = None
    # Per-dimension divisors of the inverse frequencies (GGUF `rope_freqs.weight`).
    rope_freq_factors: tuple[float, ...] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}); the config is invalid."
            )

    @property
    def num_kv_groups(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    def with_updates(self, **changes: Any) -> LlamaConfig:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> LlamaConfig:
        """Build from a Hugging Face `config.json` dict (old `rope_scaling` or new
        `rope_parameters` style). The caller checks the architecture first."""
        arch = architecture_of(cfg)
        defaults = _ARCH_DEFAULTS.get(arch, {})
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        rope = dict(cfg.get("rope_parameters") or {})
        scaling = cfg.get("rope_scaling") or None
        theta = cfg.get("rope_theta") or rope.pop("rope_theta", None) or 10000.0
        if scaling is None and rope.get("rope_type", rope.get("type", "default")) != "default":
            scaling = rope
        attention_bias = bool(cfg.get("attention_bias", False))
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=dict(scaling) if scaling else None,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=defaults.get("qkv_bias", attention_bias),
            o_bias=defaults.get("o_bias", attention_bias),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=defaults.get("qk_norm", False),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def architecture_of(cfg: dict[str, Any]) -> str:
    """The architecture name of an HF config dict (`architectures[0]`, else from `model_type`)."""
    archs = cfg.get("architectures") or []
    if archs:
        return str(archs[0])
    model_type = str(cfg.get("model_type", ""))
    return MODEL_TYPE_TO_ARCH.get(model_type, model_type or "<none>")


SUPPORTED_ARCHITECTURES = tuple(_ARCH_DEFAULTS)

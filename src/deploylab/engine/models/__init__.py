"""Llama-family model layers, configs, presets and loaders (reused by `deploylab.armt`)."""

from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    RMSNorm,
)
from deploylab.engine.models.loader import init_random_model, load_model
from deploylab.engine.models.presets import PRESETS, get_preset
from deploylab.engine.models.registry import get_model_class
from deploylab.engine.models.rope import RotaryEmbedding, apply_rotary, rotate_half

__all__ = [
    "PRESETS",
    "LlamaAttention",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaMLP",
    "LlamaModel",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "get_model_class",
    "get_preset",
    "init_random_model",
    "load_model",
    "rotate_half",
]

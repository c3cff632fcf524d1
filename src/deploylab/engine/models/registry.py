"""Architecture name -> model class, and the HF-config checks that go with it."""

from __future__ import annotations

from typing import Any

from torch import nn

from deploylab.engine.models.config import SUPPORTED_ARCHITECTURES, LlamaConfig, architecture_of
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.errors import UnsupportedArchitectureError

MODEL_REGISTRY: dict[str, type[LlamaForCausalLM]] = {
    name: LlamaForCausalLM for name in SUPPORTED_ARCHITECTURES
}


def get_model_class(architecture: str) -> type[nn.Module]:
    """The class implementing `architecture`; raises UnsupportedArchitectureError naming it."""
    cls = MODEL_REGISTRY.get(architecture)
    if cls is None:
        supported = ", ".join(sorted(MODEL_REGISTRY))
        raise UnsupportedArchitectureError(
            f"Model architecture '{architecture}' is not supported by the deploylab engine. "
            f"Supported architectures: {supported}."
        )
    return cls


def config_from_hf(cfg: dict[str, Any]) -> LlamaConfig:
    """Check an HF config dict and turn it into a `LlamaConfig`."""
    arch = architecture_of(cfg)
    get_model_class(arch)
    window = cfg.get("sliding_window")
    uses_window = cfg.get("use_sliding_window", arch == "MistralForCausalLM")
    if uses_window and window is not None and window < cfg.get("max_position_embeddings", 0):
        raise UnsupportedArchitectureError(
            f"'{arch}' with sliding-window attention (window {window}) is not supported; "
            "only full attention is implemented."
        )
    return LlamaConfig.from_hf_dict(cfg)

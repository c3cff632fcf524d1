"""Multi-LoRA serving: PEFT adapters, device slots with LRU, per-row batched corrections."""

from deploylab.engine.lora.adapter import (
    TARGET_MODULES,
    LoraAdapter,
    LoraAdapterError,
    LoraNotFoundError,
    load_adapter,
)
from deploylab.engine.lora.config import LoraConfig, lora_config
from deploylab.engine.lora.manager import LoraManager

__all__ = [
    "TARGET_MODULES",
    "LoraAdapter",
    "LoraAdapterError",
    "LoraConfig",
    "LoraManager",
    "LoraNotFoundError",
    "load_adapter",
    "lora_config",
]

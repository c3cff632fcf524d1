"""Multi-LoRA settings (vLLM's names) and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploylab.errors import ConfigError


@dataclass
class LoraConfig:
    """`max_loras` adapters resident on the device at once (so at most that many distinct
    adapters per step), `max_cpu_loras` kept in host memory, ranks up to `max_lora_rank`;
    `modules` are loaded at start (name -> PEFT adapter directory)."""

    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int = 4
    modules: dict[str, str] = field(default_factory=dict)


def lora_config(settings: Any) -> LoraConfig | None:
    """The LoRA settings of an `EngineConfig` (None when LoRA is off); raises ConfigError."""
    if not settings.enable_lora and not settings.lora_modules:
        return None
    for name in ("max_loras", "max_lora_rank"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"EngineConfig.{name} must be a positive integer, got {value!r}.")
    cpu = settings.max_cpu_loras
    if cpu is None:
        cpu = settings.max_loras
    if not isinstance(cpu, int) or cpu < settings.max_loras:
        raise ConfigError(
            f"EngineConfig.max_cpu_loras ({cpu}) must be an integer of at least max_loras "
            f"({settings.max_loras}): host memory holds every resident adapter."
        )
    modules = dict(settings.lora_modules or {})
    return LoraConfig(settings.max_loras, settings.max_lora_rank, cpu, modules)

"""The simulator's config schema (pydantic), presets, and YAML loading with line-numbered errors.

Every timing law is linear and documented in docs/sim.md; the config is the single source of
truth that the running simulator follows.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from deploylab.errors import ConfigError
from deploylab.loadtest.sim.yaml_lines import load_yaml_with_lines, read_text, validate_data

PRESETS = ("small-gpu", "large-gpu")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TTFTLaw(_Strict):
    """Time to first token once a request is admitted (after any queueing and model load)."""

    base_ms: float = Field(default=20.0, ge=0)
    per_prompt_token_ms: float = Field(
        default=0.0, ge=0, description="per prompt token not in cache"
    )
    per_cached_token_ms: float = Field(
        default=0.0, ge=0, description="per prompt token found in cache"
    )
    per_running_request_ms: float = Field(
        default=0.0, ge=0, description="per other request already running when this one is admitted"
    )


class ITLLaw(_Strict):
    """Gap between consecutive output tokens of one request."""

    base_ms: float = Field(default=10.0, ge=0)
    per_running_request_ms: float = Field(
        default=0.0, ge=0, description="per other request running when the token is scheduled"
    )
    jitter: float = Field(default=0.0, ge=0, lt=1, description="uniform relative noise, +-jitter")


class OutputLength(_Strict):
    """Output length when the request does not force it (no ignore_eos)."""

    distribution: Literal["fixed", "uniform", "normal", "lognormal", "exponential"] = "fixed"
    mean: float = Field(default=128.0, gt=0)
    std: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=4096, ge=1)

    @model_validator(mode="after")
    def _check(self) -> OutputLength:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.distribution in ("normal", "lognormal") and self.std <= 0:
            raise ValueError(f"distribution {self.distribution} needs std > 0")
        return self


class EngineLimits(_Strict):
    """Capacity of the simulated deployment."""

    kv_capacity_tokens: int = Field(
        default=1_000_000,
        ge=1,
        description="KV cache size; a request reserves prompt + output tokens",
    )
    max_running: int = Field(default=256, ge=1, description="most requests decoding at once")
    max_model_len: int = Field(
        default=131_072, ge=2, description="prompt + output limit per request"
    )


class PrefixCacheSpec(_Strict):
    enabled: bool = True
    block_size: int = Field(default=16, ge=1)
    capacity_tokens: int | None = Field(default=None, ge=1, description="default: the KV capacity")


class ModelSpec(_Strict):
    """A served base model; `count > 1` serves name-0 ... name-(count-1)."""

    name: str = Field(min_length=1)
    count: int = Field(default=1, ge=1)
    load_ms: float = Field(default=0.0, ge=0, description="cold-load delay")
    preload: bool = True

    def names(self) -> list[str]:
        return [self.name] if self.count == 1 else [f"{self.name}-{i}" for i in range(self.count)]


class AdapterSpec(_Strict):
    """A LoRA adapter on a base model, addressed by its own model name."""

    name: str = Field(min_length=1)
    base: str = Field(min_length=1)
    count: int = Field(default=1, ge=1)
    load_ms: float = Field(default=0.0, ge=0)
    preload: bool = False

    def names(self) -> list[str]:
        return [self.name] if self.count == 1 else [f"{self.name}-{i}" for i in range(self.count)]


class Residency(_Strict):
    """How many models / adapters may be loaded at once (least recently used is evicted)."""

    max_models: int | None = Field(default=None, ge=1)
    max_adapters: int | None = Field(default=None, ge=1)


class AfterTokensFault(_Strict):
    rate: float = Field(default=0.0, ge=0, le=1)
    after_tokens: int = Field(default=1, ge=0, description="tokens sent before the fault")


class StallFault(AfterTokensFault):
    duration_ms: float = Field(default=1000.0, ge=0)


class SlowFirstByteFault(_Strict):
    rate: float = Field(default=0.0, ge=0, le=1)
    delay_ms: float = Field(default=1000.0, ge=0)


class Faults(_Strict):
    """Injected failures; each rate is a per-request probability."""

    errors: dict[int, float] = Field(default_factory=dict, description="HTTP status -> rate")
    stall: StallFault = Field(default_factory=StallFault)
    drop: AfterTokensFault = Field(default_factory=AfterTokensFault)
    truncate: AfterTokensFault = Field(
        default_factory=AfterTokensFault,
        description="end the stream with [DONE] and no finish_reason (llama-cpp-python's cut)",
    )
    slow_first_byte: SlowFirstByteFault = Field(default_factory=SlowFirstByteFault)

    @field_validator("errors")
    @classmethod
    def _check_errors(cls, errors: dict[int, float]) -> dict[int, float]:
        for status, rate in errors.items():
            if not 400 <= status <= 599:
                raise ValueError(f"status {status} is not an HTTP error status (400-599)")
            if not 0 <= rate <= 1:
                raise ValueError(f"rate {rate} for status {status} is not in [0, 1]")
        if sum(errors.values()) > 1:
            raise ValueError("the error rates add up to more than 1")
        return errors


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"model name {name!r} is defined twice; names must be unique")
        seen.add(name)


class SimConfig(_Strict):
    """Everything the simulated server does; see docs/sim.md."""

    description: str = ""
    seed: int = 0
    precise_timer: bool = Field(default=True, description="timerfd-driven timer (Linux), sub-ms")
    tokenizer: str | None = Field(
        default=None,
        description="count prompts with this tokenizer (folder, .gguf or model name); "
        "default: a documented approximation",
    )
    engine: EngineLimits = Field(default_factory=EngineLimits)
    ttft: TTFTLaw = Field(default_factory=TTFTLaw)
    itl: ITLLaw = Field(default_factory=ITLLaw)
    output: OutputLength = Field(default_factory=OutputLength)
    prefix_cache: PrefixCacheSpec = Field(default_factory=PrefixCacheSpec)
    models: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(name="sim-model")], min_length=1
    )
    adapters: list[AdapterSpec] = Field(default_factory=list)
    residency: Residency = Field(default_factory=Residency)
    faults: Faults = Field(default_factory=Faults)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        _check_unique([n for m in models for n in m.names()])
        return models

    @field_validator("adapters")
    @classmethod
    def _check_adapters(
        cls, adapters: list[AdapterSpec], info: ValidationInfo
    ) -> list[AdapterSpec]:
        bases = [n for m in info.data.get("models", []) for n in m.names()]
        _check_unique(bases + [n for a in adapters for n in a.names()])
        for adapter in adapters:
            if bases and adapter.base not in bases:
                raise ValueError(
                    f"adapter {adapter.name!r} names base {adapter.base!r}, which is not one of "
                    f"the models ({', '.join(sorted(bases)[:10])})"
                )
        return adapters

    @field_validator("residency")
    @classmethod
    def _check_preload(cls, residency: Residency, info: ValidationInfo) -> Residency:
        for kind, limit in (("models", residency.max_models), ("adapters", residency.max_adapters)):
            preloaded = sum(s.count for s in info.data.get(kind, []) if s.preload)
            if limit is not None and preloaded > limit:
                raise ValueError(
                    f"{preloaded} {kind} have preload: true but max_{kind} is {limit}; "
                    f"set preload: false on some {kind} or raise the limit"
                )
        return residency

    def model_names(self) -> list[str]:
        """Every servable name: base models, then adapters."""
        names = [n for m in self.models for n in m.names()]
        return names + [n for a in self.adapters for n in a.names()]


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_text(name: str) -> str:
    """The YAML text of a shipped preset, or ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown sim preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return resources.files("deploylab.loadtest.sim").joinpath(f"presets/{name}.yaml").read_text()


def parse_config(text: str, source: str = "<config>", preset: str | None = None) -> SimConfig:
    """Validate config YAML; a top-level `preset: NAME` (or `preset`) supplies the defaults.

    The file's values override the preset's (mappings merge key by key, lists are replaced).
    """
    data, lines = load_yaml_with_lines(text, source)
    if isinstance(data, dict) and "preset" in data:
        named = data.pop("preset")
        if not isinstance(named, str):
            raise ConfigError(f"{source}:{lines[('preset',)]}: preset must be a preset name.")
        if preset is not None and preset != named:
            raise ConfigError(
                f"{source}:{lines[('preset',)]}: the file names preset {named!r} but the command "
                f"line names {preset!r}; keep one of them."
            )
        preset = named
    if preset is not None and isinstance(data, dict):
        data = _deep_merge(yaml.safe_load(preset_text(preset)), data)
    return validate_data(SimConfig, data, lines, source)


def load_config(path: Path | None = None, preset: str | None = None) -> SimConfig:
    """Build the config from a file and/or a preset name (file values override the preset)."""
    if path is None:
        if preset is None:
            return SimConfig()
        return parse_config(preset_text(preset), f"preset {preset}")
    return parse_config(read_text(path), str(path), preset)


def dump_config(config: SimConfig) -> str:
    """The effective config as YAML (a starting point for a custom file)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

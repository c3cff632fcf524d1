"""`SpeculativeConfig`: vLLM's `speculative_config` dict, validated with clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deploylab.errors import ConfigError

METHODS = ("ngram",)
MAX_SPECULATIVE_TOKENS = 32
_KEYS = ("method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "adaptive")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Which proposer and how many draft tokens per step (vLLM names).

    `ngram` (prompt lookup): match the last `prompt_lookup_max` .. `prompt_lookup_min` tokens
    against the prompt and output so far and propose what followed the latest match.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    adaptive: bool = True  # k per sequence and step from the measured cost model (policy.py)


def _int_field(raw: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(
            f"speculative_config.{name} must be an integer in [{low}, {high}], got {value!r}."
        )
    return value


def parse_speculative_config(raw: Any) -> SpeculativeConfig | None:
    """A SpeculativeConfig from a dict, a JSON string or None (speculation off)."""
    if raw is None or isinstance(raw, SpeculativeConfig):
        return raw
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"speculative_config is not valid JSON ({exc.msg}); pass e.g. "
                '\'{"method": "ngram", "num_speculative_tokens": 4}\'.'
            ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"speculative_config must be a JSON object (dict), got {type(raw).__name__}."
        )
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"speculative_config has unknown keys {unknown}; known keys: {', '.join(_KEYS)}."
        )
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(
            f"speculative_config.method {method!r} is not supported; supported: "
            f"{', '.join(METHODS)} (draft_model and head proposers are not built yet)."
        )
    k = _int_field(raw, "num_speculative_tokens", 1, MAX_SPECULATIVE_TOKENS)
    if k is None:
        raise ConfigError("speculative_config.num_speculative_tokens is required (e.g. 4).")
    hi = _int_field(raw, "prompt_lookup_max", 1, 64)
    lo = _int_field(raw, "prompt_lookup_min", 1, 64)
    if hi is None:
        hi = lo if lo is not None else SpeculativeConfig.prompt_lookup_max
    if lo is None:
        lo = min(hi, SpeculativeConfig.prompt_lookup_min)
    if lo > hi:
        raise ConfigError(
            f"speculative_config.prompt_lookup_min ({lo}) must not exceed prompt_lookup_max ({hi})."
        )
    adaptive = raw.get("adaptive", True)
    if not isinstance(adaptive, bool):
        raise ConfigError(f"speculative_config.adaptive must be true or false, got {adaptive!r}.")
    return SpeculativeConfig(method, k, hi, lo, adaptive)

"""`SpeculativeConfig`: vLLM's `speculative_config` dict, validated with clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deploylab.errors import ConfigError

METHODS = ("ngram", "head", "draft_model")
MAX_SPECULATIVE_TOKENS = 32
_KEYS = (
    "method",
    "num_speculative_tokens",
    "prompt_lookup_max",
    "prompt_lookup_min",
    "adaptive",
    "head_path",
    "model",
    "draft_layers",
    "cuda_graph_verify",
    "cascade_rule",
    "cascade_alpha",
    "judge",
    "judge_path",
    "judge_delta",
    "tree_width",
)


@dataclass(frozen=True)
class SpeculativeConfig:
    """Which proposer and how many draft tokens per step (vLLM names).

    `ngram` (prompt lookup): match the last `prompt_lookup_max` .. `prompt_lookup_min` tokens
    against the prompt and output so far and propose what followed the latest match.
    `head`: a learned draft head on the target's last hidden states (`head_path`, default the
    head shipped for the default model).
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    adaptive: bool = True  # k per sequence and step from the measured cost model (policy.py)
    head_path: str | None = None  # method "head": a DraftHead safetensors file
    model: str | None = None  # method "draft_model": catalog name or path of the draft
    draft_layers: int | None = None  # method "draft_model": keep the target's first N layers
    # CUDA: verify steps replay the decode CUDA graphs as k + 1 rows per sequence (H100, batch
    # 64, k = 4: 8.4 ms against 42.6 ms eager; same logits as k + 1 single decode steps);
    # off: a step with drafts runs eagerly.
    cuda_graph_verify: bool = True
    # Lossy, opt-in: speculative cascades (engine/spec/cascades.py). Drafts are verified against
    # the cascade target of this deferral rule and lenience instead of the target itself, so
    # the output no longer follows the target exactly. None: the exact rules.
    cascade_rule: str | None = None
    cascade_alpha: float = 0.0
    # Lossy, opt-in: judge decoding (engine/spec/judge.py). A draft is also kept when a linear
    # judge on the target's hidden state at that draft fires. judge_path: the judge file
    # (None: the one shipped for the default model); judge_delta: None takes the file's.
    judge: bool = False
    judge_path: str | None = None
    judge_delta: float | None = None
    # Token trees (every method): up to this many different continuations (ngram) or first
    # tokens (head, draft_model) per step, a tree of at most num_speculative_tokens nodes
    # verified in one pass; 1: a chain.
    tree_width: int = 1


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
            f"{', '.join(METHODS)}."
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
    graph_verify = raw.get("cuda_graph_verify", True)
    for name, flag in (("adaptive", adaptive), ("cuda_graph_verify", graph_verify)):
        if not isinstance(flag, bool):
            raise ConfigError(f"speculative_config.{name} must be true or false, got {flag!r}.")
    head_path = raw.get("head_path")
    if head_path is not None and (not isinstance(head_path, str) or method != "head"):
        raise ConfigError(
            "speculative_config.head_path must be a file path (string) and needs "
            f'"method": "head"; got {head_path!r} with method {method!r}.'
        )
    model = raw.get("model")
    layers = _int_field(raw, "draft_layers", 1, 1024)
    if (model is not None or layers is not None) and method != "draft_model":
        raise ConfigError(
            'speculative_config.model and draft_layers need "method": "draft_model", '
            f"got method {method!r}."
        )
    if model is not None and (not isinstance(model, str) or layers is not None):
        raise ConfigError(
            "speculative_config.model must be a model name or path (string), and is exclusive "
            f"with draft_layers; got model={model!r}, draft_layers={layers!r}."
        )
    rule, alpha = _cascade(raw)
    judge, judge_path, delta = _judge(raw)
    if judge and rule is not None:
        raise ConfigError(
            "speculative_config: pick one lossy rule, cascade_rule or judge, not both."
        )
    width = _int_field(raw, "tree_width", 1, 16) or 1
    if width > 1 and (rule is not None or judge):
        raise ConfigError(
            "speculative_config.tree_width > 1 (token trees) needs the exact rules (no "
            f"cascade_rule or judge); got cascade_rule={rule!r}, judge={judge!r}."
        )
    return SpeculativeConfig(
        method, k, hi, lo, adaptive, head_path, model, layers, graph_verify, rule, alpha,
        judge, judge_path, delta, width,
    )  # fmt: skip


def _judge(raw: dict[str, Any]) -> tuple[bool, str | None, float | None]:
    """The validated (judge, judge_path, judge_delta); judge_path or judge_delta imply judge
    unless it is false."""
    path, delta = raw.get("judge_path"), raw.get("judge_delta")
    judge = raw.get("judge", path is not None or delta is not None)
    if not isinstance(judge, bool):
        raise ConfigError(f"speculative_config.judge must be true or false, got {judge!r}.")
    if not judge and (path is not None or delta is not None):
        raise ConfigError("speculative_config.judge_path and judge_delta need judge: true.")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"speculative_config.judge_path must be a file path, got {path!r}.")
    if delta is not None and (
        isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 <= delta <= 1
    ):
        raise ConfigError(
            f"speculative_config.judge_delta must be a number in [0, 1], got {delta!r}."
        )
    return judge, path, None if delta is None else float(delta)


def _cascade(raw: dict[str, Any]) -> tuple[str | None, float]:
    """The validated (cascade_rule, cascade_alpha) pair; (None, 0.0) when off."""
    from deploylab.engine.spec.cascades import DeferralRule

    rule, alpha = raw.get("cascade_rule"), raw.get("cascade_alpha", 0.0)
    rules = ", ".join(r.value for r in DeferralRule)
    if rule is None:
        if raw.get("cascade_alpha", 0.0) != 0.0:  # 0.0: the default a round trip carries
            raise ConfigError(f"speculative_config.cascade_alpha needs cascade_rule ({rules}).")
        return None, 0.0
    if rule not in {r.value for r in DeferralRule}:
        raise ConfigError(f"speculative_config.cascade_rule {rule!r} is not one of {rules}.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError(
            f"speculative_config.cascade_alpha must be a number in [0, 1], got {alpha!r}."
        )
    return str(rule), float(alpha)


def cuda_graph_rows(max_num_seqs: int, raw: Any) -> int:
    """Rows the decode CUDA graphs are captured for: with `cuda_graph_verify` a verify step
    replays them with k + 1 rows per drafting sequence, so up to max_num_seqs · (k + 1),
    capped at the largest bucket (bigger verify steps run eagerly)."""
    from deploylab.engine.cuda_graphs import BUCKETS

    spec = parse_speculative_config(raw)
    if spec is None or not spec.cuda_graph_verify:
        return max_num_seqs
    return max(max_num_seqs, min(max_num_seqs * (1 + spec.num_speculative_tokens), BUCKETS[-1]))

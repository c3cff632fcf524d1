"""What the engine hands back: per-step deltas, final outputs, logprobs, stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenLogprobs:
    """The logprob of a generated token and the most likely alternatives at that position
    (`top`: (token id, logprob) pairs, best first, from the raw model distribution)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class RequestDelta:
    """What one request gained in one engine step (streamed by `AsyncEngine`).

    `new_text` may lag `new_token_ids`: text is held back while it could be the start of a
    stop string or an incomplete UTF-8 character. The final delta (`finish_reason` set)
    flushes everything.
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    logprobs: list[TokenLogprobs] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    index: int = 0  # which of the request's `n` samples (the choice index)
    request_finished: bool = False  # True on the request's last delta (all samples done)
    # The prompt tokens' logprobs (first entry None), on the sample's first delta only.
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    @property
    def finished(self) -> bool:
        """True for this sample's last delta."""
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The complete result of one request (from `LLM.generate`)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprobs] | None = None
    num_cached_tokens: int = 0
    index: int = 0
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    @property
    def finished(self) -> bool:
        """True once the request has a finish reason."""
        return self.finish_reason is not None

    def add(self, delta: RequestDelta) -> None:
        """Append a delta of the same request."""
        self.text += delta.new_text
        self.token_ids.extend(delta.new_token_ids)
        if delta.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(delta.logprobs)
        self.num_cached_tokens = delta.num_cached_tokens
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine for metrics (counters are totals since start)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks referenced by requests
    num_kv_blocks: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which were served from it
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    num_preemptions_total: int = 0
    num_recomputed_tokens_total: int = 0  # tokens computed again after preemptions
    num_tree_attention_steps_total: int = 0  # decode steps that ran tree attention
    num_requests_finished_total: int = 0
    num_steps_total: int = 0
    # Speculative decoding (None when off): sequence-steps with drafts, drafts, accepted ones.
    spec_num_drafts_total: int | None = None
    spec_num_draft_tokens_total: int = 0
    spec_num_accepted_tokens_total: int = 0
    spec_accepted_per_position: tuple[int, ...] = ()  # accepted drafts at positions 0..k-1
    # Multi-LoRA (max_loras 0 when off): adapters of running / waiting requests, slot loads.
    lora_running: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    lora_max: int = 0
    lora_loads_total: int = 0
    lora_evictions_total: int = 0
    # KV tiers (empty when off): prompt tokens looked up there after a device-cache miss,
    # of which copied back, and each tier's counters (`kv_tiers.TierStats`).
    external_prefix_cache_queries: int = 0
    external_prefix_cache_hits: int = 0
    kv_tiers: tuple[Any, ...] = ()

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Hits over queries (0 when nothing was looked up)."""
        queries = self.prefix_cache_queries
        return self.prefix_cache_hits / queries if queries else 0.0

"""`SamplingParams`: how to pick tokens and when to stop, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploylab.errors import InvalidRequestError

if TYPE_CHECKING:
    from deploylab.engine.structured import StructuredOutput

MAX_LOGPROBS = 20
SAMPLING_EPS = 1e-5  # temperatures below this decode greedily (as vLLM): 1/T would overflow
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # what a torch.Generator accepts
MAX_N = 128


@dataclass
class SamplingParams:
    """Per-request decoding settings (vLLM semantics).

    temperature 0 (or below 1e-5) means greedy. `top_k` -1 (or 0) disables top-k. `max_tokens`
    None means "until the context is full". `logprobs` N returns, for every generated token,
    its logprob and the N most likely alternatives (0 = the sampled token only), taken from the
    model's raw distribution (before penalties and temperature). `seed` makes sampling
    reproducible whatever the other requests in the batch are (sample i of `n` uses seed + i).
    `n` samples share the prompt's KV blocks (forked after prefill). `prompt_logprobs` N
    returns the prompt tokens' logprobs too (then `max_tokens` may be 0: prefill only).
    `structured_output` constrains decoding to a JSON schema or grammar (structured.py).
    `num_speculative_tokens` (deploylab's own) caps this request's draft tokens per step when
    the engine speculates (0: never).
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    n: int = 1
    prompt_logprobs: int | None = None
    structured_output: StructuredOutput | None = None
    num_speculative_tokens: int | None = None  # per-request draft limit (None: engine's k)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if self.top_k == 0:
            self.top_k = -1
        self.validate()

    @property
    def greedy(self) -> bool:
        """True when decoding is argmax (temperature 0)."""
        return self.temperature < SAMPLING_EPS

    def validate(self) -> None:
        """Raise InvalidRequestError (with `param`) for the first invalid field."""

        def bad(param: str, message: str) -> InvalidRequestError:
            return InvalidRequestError(message, param=param)

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, f"{name} must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise bad(name, f"{name} must be a finite number, got {value!r}.")
        least = 0 if self.prompt_logprobs is not None else 1
        if self.max_tokens is not None and (not is_int(self.max_tokens) or self.max_tokens < least):
            raise bad(
                "max_tokens",
                f"max_tokens must be at least {least}, got {self.max_tokens!r}"
                + (" (0 needs prompt logprobs)." if least else "."),
            )
        if not is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise bad("n", f"n must be an integer in [1, {MAX_N}], got {self.n!r}.")
        if self.prompt_logprobs is not None and (
            not is_int(self.prompt_logprobs) or not 0 <= self.prompt_logprobs <= MAX_LOGPROBS
        ):
            raise bad(
                "prompt_logprobs",
                f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs!r}.",
            )
        if not self.temperature >= 0.0:
            raise bad("temperature", f"temperature must be >= 0, got {self.temperature!r}.")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not is_int(self.top_k) or (self.top_k < 1 and self.top_k != -1):
            raise bad("top_k", f"top_k must be -1 (disabled) or >= 1, got {self.top_k!r}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"min_p must be in [0, 1], got {self.min_p!r}.")
        if not self.repetition_penalty > 0.0:
            raise bad(
                "repetition_penalty",
                f"repetition_penalty must be > 0, got {self.repetition_penalty!r}.",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise bad(name, f"{name} must be in [-2, 2], got {value!r}.")
        if self.seed is not None and (
            not is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX
        ):
            raise bad(
                "seed", f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {self.seed!r}."
            )
        if self.seed is not None and is_int(self.n) and self.seed + self.n - 1 > SEED_MAX:
            raise bad(
                "seed",
                f"seed + n - 1 must stay <= {SEED_MAX} (sample i uses seed + i), got seed "
                f"{self.seed} with n {self.n}.",
            )
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", f"min_tokens must be >= 0, got {self.min_tokens!r}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad(
                "min_tokens",
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens}).",
            )
        if self.logprobs is not None and (
            not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise bad(
                "logprobs", f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs!r}."
            )
        k = self.num_speculative_tokens
        if k is not None and (not is_int(k) or k < 0):
            raise bad(
                "num_speculative_tokens",
                f"num_speculative_tokens must be an integer >= 0, got {k!r}.",
            )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise bad("stop", f"stop strings must be non-empty strings, got {s!r}.")
        for t in self.stop_token_ids:
            if not is_int(t) or t < 0:
                raise bad("stop_token_ids", f"stop_token_ids must be token ids >= 0, got {t!r}.")

"""The performance model: TTFT, inter-token latency and output length, as plain functions.

The formulas (all linear, documented in docs/sim.md):

    ttft_ms = ttft.base_ms + ttft.per_prompt_token_ms * uncached_prompt_tokens
              + ttft.per_cached_token_ms * cached_prompt_tokens
              + ttft.per_running_request_ms * other_running_requests
    itl_ms  = (itl.base_ms + itl.per_running_request_ms * other_running_requests)
              * uniform(1 - itl.jitter, 1 + itl.jitter)
"""

from __future__ import annotations

import math
import random

from deploylab.loadtest.sim.config import ITLLaw, OutputLength, TTFTLaw


class PerformanceLaw:
    """The configured laws, precomputed in seconds for the hot path."""

    def __init__(self, ttft: TTFTLaw, itl: ITLLaw, output: OutputLength, rng: random.Random):
        self._t0 = ttft.base_ms / 1e3
        self._t_tok = ttft.per_prompt_token_ms / 1e3
        self._t_cached = ttft.per_cached_token_ms / 1e3
        self._t_run = ttft.per_running_request_ms / 1e3
        self._i0 = itl.base_ms / 1e3
        self._i_run = itl.per_running_request_ms / 1e3
        self._jitter = itl.jitter
        self._output = output
        self._rng = rng

    def ttft_s(self, prompt_tokens: int, cached_tokens: int, other_running: int) -> float:
        """Seconds from admission to the first token."""
        return (
            self._t0
            + self._t_tok * (prompt_tokens - cached_tokens)
            + self._t_cached * cached_tokens
            + self._t_run * other_running
        )

    def itl_s(self, other_running: int) -> float:
        """Seconds from one output token to the next."""
        gap = self._i0 + self._i_run * other_running
        if self._jitter:
            gap *= 1.0 + self._jitter * (2.0 * self._rng.random() - 1.0)
        return gap

    def sample_output_tokens(self) -> int:
        """An output length drawn from the configured distribution, within [min, max]."""
        spec, rng = self._output, self._rng
        if spec.distribution == "fixed":
            value = spec.mean
        elif spec.distribution == "uniform":
            value = rng.uniform(spec.min, spec.max)
        elif spec.distribution == "normal":
            value = rng.gauss(spec.mean, spec.std)
        elif spec.distribution == "lognormal":
            sigma2 = math.log1p((spec.std / spec.mean) ** 2)
            value = rng.lognormvariate(math.log(spec.mean) - sigma2 / 2, math.sqrt(sigma2))
        else:
            value = rng.expovariate(1.0 / spec.mean)
        return int(min(max(round(value), spec.min), spec.max))

    def output_tokens(
        self, max_tokens: int | None, ignore_eos: bool, min_tokens: int, room: int
    ) -> tuple[int, str]:
        """(output length, finish_reason) for one request; `room` is what max_model_len leaves."""
        if ignore_eos and max_tokens is not None:
            return max_tokens, "length"
        limit = room if max_tokens is None else min(max_tokens, room)
        count = max(self.sample_output_tokens(), min_tokens)
        if count >= limit:
            return limit, "length"
        return count, "stop"

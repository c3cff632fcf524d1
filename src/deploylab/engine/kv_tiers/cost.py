"""`CostModel`: is copying a block back from a tier cheaper than recomputing its tokens?

Copy time of a block = its bytes / the tier's bandwidth to the device (the host tier's is
measured once at start; the disk tier's is learned from its reads). Recompute time = tokens /
the engine's prefill rate, learned from steps that computed at least `MIN_PREFILL_TOKENS`
prompt tokens (an exponential moving average). Until a rate is known, a hit is taken (copying
beats recomputing on every device we measured). `policy="always"` takes every hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_PREFILL_TOKENS = 64
EMA = 0.3  # weight of the newest observation


@dataclass
class CostModel:
    """Bandwidths in bytes/s per tier and the prefill rate in tokens/s (None: unknown)."""

    block_bytes: int
    block_size: int
    policy: str = "auto"
    bandwidth: dict[str, float] = field(default_factory=dict)
    prefill_tps: float | None = None

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """Fold a step's prompt tokens and its duration into the prefill rate."""
        if tokens >= MIN_PREFILL_TOKENS and seconds > 0:
            self.prefill_tps = _ema(self.prefill_tps, tokens / seconds)

    def observe_copy(self, tier: str, nbytes: int, seconds: float) -> None:
        """Fold a measured copy from `tier` into its bandwidth."""
        if nbytes > 0 and seconds > 0:
            self.bandwidth[tier] = _ema(self.bandwidth.get(tier), nbytes / seconds)

    def copy_seconds(self, tier: str) -> float | None:
        """Seconds to bring one block back from `tier` (None: not measured yet)."""
        bw = self.bandwidth.get(tier)
        return self.block_bytes / bw if bw else None

    def recompute_seconds(self) -> float | None:
        """Seconds to prefill one block's tokens (None: not measured yet)."""
        return self.block_size / self.prefill_tps if self.prefill_tps else None

    def worth_loading(self, tier: str) -> bool:
        """True when a block from `tier` should be copied back rather than recomputed."""
        if self.policy == "always":
            return True
        copy, recompute = self.copy_seconds(tier), self.recompute_seconds()
        return copy is None or recompute is None or copy < recompute


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new

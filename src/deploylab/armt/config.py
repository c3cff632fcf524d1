"""`ARMTConfig`: segment size, memory tokens and associative-memory sizes of an ARMT model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from deploylab.errors import UsageError

ValueInit = Literal["zero", "normal"]


@dataclass(frozen=True)
class ARMTConfig:
    """How an ARMT reads a long input: segments of `segment_size` tokens, each followed by
    `num_mem_tokens` memory tokens, and one associative memory of key size 2·nu·d_mem per
    decoder layer."""

    segment_size: int = 1024
    num_mem_tokens: int = 128
    d_mem: int = 64
    nu: int = 3
    # ε in the read/write denominators z·φ + ε.
    eps: float = 1e-5
    # L2-normalise φ's output, as the ARMT authors' code does; the update rules are unchanged.
    normalize_features: bool = True
    # W_mv starts at zero in the paper (a fresh ARMT then writes nothing, so it behaves as the
    # base model run segment by segment); "normal" makes the memory path carry information.
    w_mv_init: ValueInit = "zero"
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("segment_size", self.segment_size, 1),
            ("num_mem_tokens", self.num_mem_tokens, 1),
            ("d_mem", self.d_mem, 1),
            ("nu", self.nu, 1),
        )
        for name, value, low in checks:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(
                    f"ARMT {name} must be an integer >= {low}, got {value!r}. "
                    "Pick a positive size (e.g. --segment 1024 --memory-tokens 128)."
                )
        if not self.eps > 0:
            raise UsageError(f"ARMT eps must be > 0, got {self.eps!r}.")
        if not self.init_std > 0:
            raise UsageError(f"ARMT init_std must be > 0, got {self.init_std!r}.")
        if self.w_mv_init not in ("zero", "normal"):
            raise UsageError(f"ARMT w_mv_init must be 'zero' or 'normal', got {self.w_mv_init!r}.")

    @property
    def d_key(self) -> int:
        """Width of the DPFP features: 2·nu·d_mem."""
        return 2 * self.nu * self.d_mem

    def num_segments(self, num_tokens: int) -> int:
        """Segments needed for `num_tokens` tokens (the last one may be shorter)."""
        return -(-num_tokens // self.segment_size)

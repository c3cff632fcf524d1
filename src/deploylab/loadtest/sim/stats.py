"""The simulator's account of itself: how late its own timer ran, and what it did."""

from __future__ import annotations

from typing import Any

_BIN_US = 10  # lateness histogram resolution
_BINS = 10_000  # up to 100 ms; later values land in the last bin


class LatenessHistogram:
    """Counts of timer lateness (actual minus intended write time) in 10 us bins."""

    def __init__(self) -> None:
        self.counts = [0] * (_BINS + 1)
        self.n = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self.early = 0

    def add(self, late_s: float) -> None:
        """Record one write `late_s` seconds after its deadline (negative: early)."""
        self.n += 1
        self.total_s += late_s
        if late_s < 0:
            self.early += 1
            late_s = 0.0
        if late_s > self.max_s:
            self.max_s = late_s
        self.counts[min(int(late_s * 1e6) // _BIN_US, _BINS)] += 1

    def quantile_us(self, q: float) -> float:
        """Upper edge of the bin holding quantile q, in microseconds."""
        if not self.n:
            return 0.0
        rank = q * self.n
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return float((i + 1) * _BIN_US)
        return float(len(self.counts) * _BIN_US)

    def summary(self) -> dict[str, Any]:
        """count, mean, p50, p90, p99, max in microseconds."""
        return {
            "count": self.n,
            "mean_us": round(self.total_s / self.n * 1e6, 1) if self.n else 0.0,
            "p50_us": self.quantile_us(0.5),
            "p90_us": self.quantile_us(0.9),
            "p99_us": self.quantile_us(0.99),
            "max_us": round(self.max_s * 1e6, 1),
        }

"""Turn request records into what the charts draw: empirical CDFs and per-interval series."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from deploylab.loadtest.results import RequestRecord

_CDF_POINTS = 400


def cdf(values: Iterable[float], points: int = _CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF, thinned to about `points` points (ends kept)."""
    x = np.sort(np.fromiter(values, dtype=float))
    if x.size == 0:
        return x, x
    y = np.arange(1, x.size + 1) / x.size
    if x.size > points:
        keep = np.unique(np.linspace(0, x.size - 1, points).round().astype(int))
        x, y = x[keep], y[keep]
    return x, y


def latency_values(records: Sequence[RequestRecord], metric: str) -> list[float]:
    """One latency of the measured, completed requests (ITL: every gap)."""
    ok = [r for r in records if r.ok and r.in_window]
    if metric == "itl_ms":
        return [v for r in ok for v in r.itl_ms]
    values = (getattr(r, metric) for r in ok)
    return [float(v) for v in values if v is not None]


@dataclass
class TimeBins:
    """Per-interval series over the run; `t` is each interval's middle (s since start)."""

    t: np.ndarray
    width_s: float
    sent_per_s: np.ndarray
    done_per_s: np.ndarray
    failed_per_s: np.ndarray
    ttft_p50: np.ndarray
    ttft_p99: np.ndarray
    e2e_p50: np.ndarray
    e2e_p99: np.ndarray
    tokens_per_s: np.ndarray


_MIN_PER_BIN = 3  # with few requests, intervals wide enough to hold a few each


def _bin_width(span_s: float, requests: int = 10**9) -> float:
    """About 40 intervals (fewer with few requests: about 3 per interval, at least 4
    intervals), at a round width of at least 0.1 s."""
    intervals = min(40, max(4, requests // _MIN_PER_BIN))
    raw = max(span_s / intervals, 0.1)
    for width in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if width >= raw:
            return float(width)
    return float(np.ceil(raw / 600) * 600)


def _percentile_per_bin(idx: np.ndarray, values: np.ndarray, n: int, q: float) -> np.ndarray:
    out = np.full(n, np.nan)
    for b in range(n):
        chosen = values[idx == b]
        if chosen.size:
            out[b] = np.percentile(chosen, q)
    return out


def time_bins(records: Sequence[RequestRecord]) -> TimeBins | None:
    """Bin requests by their send time (latencies, send rate) and by arrival (completions,
    streamed tokens). Latencies are response times (from the scheduled send)."""
    if not records:
        return None
    ends = [r.sent_s + r.e2e_ms / 1000 for r in records]
    span = max(max(ends), max(r.sent_s for r in records))
    width = _bin_width(span, len(records))
    n = max(1, int(np.ceil(span / width)))

    def index(times: Iterable[float]) -> np.ndarray:
        arr = np.fromiter(times, dtype=float)
        return np.clip((arr / width).astype(int), 0, n - 1)

    def counts(times: Iterable[float], weights: Iterable[float] | None = None) -> np.ndarray:
        idx = index(times)
        w = None if weights is None else np.fromiter(weights, dtype=float)
        return np.bincount(idx, weights=w, minlength=n)[:n] / width

    ok = [r for r in records if r.ok]
    with_ttft = [r for r in ok if r.ttft_response_ms is not None]
    chunk_t: list[float] = []
    chunk_w: list[float] = []
    for r in ok:
        if r.chunk_times_ms:
            share = r.output_tokens / len(r.chunk_times_ms)
            chunk_t.extend(r.sent_s + c / 1000 for c in r.chunk_times_ms)
            chunk_w.extend([share] * len(r.chunk_times_ms))
    ttft_idx = index(r.sent_s for r in with_ttft)
    ttft = np.fromiter((r.ttft_response_ms or 0.0 for r in with_ttft), dtype=float)
    e2e_idx = index(r.sent_s for r in ok)
    e2e = np.fromiter((r.e2e_response_ms for r in ok), dtype=float)
    return TimeBins(
        t=(np.arange(n) + 0.5) * width,
        width_s=width,
        sent_per_s=counts(r.sent_s for r in records),
        done_per_s=counts(r.sent_s + r.e2e_ms / 1000 for r in ok),
        failed_per_s=counts(r.sent_s + r.e2e_ms / 1000 for r in records if not r.ok),
        ttft_p50=_percentile_per_bin(ttft_idx, ttft, n, 50),
        ttft_p99=_percentile_per_bin(ttft_idx, ttft, n, 99),
        e2e_p50=_percentile_per_bin(e2e_idx, e2e, n, 50),
        e2e_p99=_percentile_per_bin(e2e_idx, e2e, n, 99),
        tokens_per_s=counts(chunk_t, chunk_w) if chunk_t else np.zeros(n),
    )

"""Over-time series: with few requests the intervals widen so each holds a few."""

from __future__ import annotations

import numpy as np

from deploylab.loadtest.client import RawRecord
from deploylab.loadtest.records import to_record
from deploylab.loadtest.report.series import time_bins


def _records(n: int, span_s: float) -> list:
    out = []
    for i in range(n):
        sent = int(i * span_s / n * 1e9)
        raw = RawRecord(i, 1, 0, "m", None, {}, 10, 4, scheduled_ns=sent, sent_ns=sent)
        raw.end_ns = sent + 500_000_000
        raw.chunk_ns = [sent + 100_000_000, raw.end_ns]
        out.append(to_record(raw, 0, (2, "chunks"), (0.0, span_s)))
    return out


def test_few_requests_get_few_wide_intervals() -> None:
    bins = time_bins(_records(12, 60.0))
    assert bins is not None and len(bins.t) <= 4
    filled = ~np.isnan(bins.ttft_p50)
    assert filled.all()  # no interval left empty, so no point stands alone between gaps


def test_many_requests_keep_about_forty_intervals() -> None:
    bins = time_bins(_records(2000, 60.0))
    assert bins is not None and 30 <= len(bins.t) <= 60

"""Aggregates: latency percentiles, throughput, goodput, SLO verdicts, per-class breakdowns.

Latency statistics cover requests whose scheduled send falls in the measurement window.
Throughput counts what the server delivered inside the window: requests that completed in it
and streamed chunks that arrived in it, divided by the window's length. Goodput counts only
measured requests (sent in the window) that completed in it and met every SLO, so it is never
above the completed count of measured requests.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from deploylab.loadtest.results import (
    ClassSummary,
    LatencyStats,
    RequestRecord,
    SLOCheck,
    Summary,
)
from deploylab.loadtest.scenario import SLO

_QUANTILES = (50, 90, 95, 99)


def latency_stats(values: Iterable[float]) -> LatencyStats:
    """Mean, p50, p90, p95, p99 and max (linear interpolation between samples)."""
    arr = np.fromiter(values, dtype=float)
    if arr.size == 0:
        return LatencyStats()
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, _QUANTILES))
    return LatencyStats(
        count=int(arr.size),
        mean=float(arr.mean()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        max=float(arr.max()),
    )


def _metric(rec: RequestRecord, name: str, percentile: float) -> float | None:
    """The request's own value for an SLO metric (response time for TTFT and E2E)."""
    if name == "ttft_ms":
        return rec.ttft_response_ms
    if name == "e2e_ms":
        return rec.e2e_response_ms
    if name == "tpot_ms":
        return rec.tpot_ms
    if name == "itl_ms":
        return float(np.percentile(rec.itl_ms, percentile)) if rec.itl_ms else None
    raise ValueError(name)


def meets_slo(rec: RequestRecord, slo: SLO) -> bool:
    """A completed request meets the SLO when each of its own values is within every bound."""
    if not rec.ok:
        return False
    for name, bound in slo.bounds().items():
        value = _metric(rec, name, bound.percentile)
        if value is not None and value > bound.max_ms:
            return False
    return True


def _latencies(ok: Sequence[RequestRecord]) -> dict[str, LatencyStats]:
    return {
        "ttft_ms": latency_stats(r.ttft_ms for r in ok if r.ttft_ms is not None),
        "itl_ms": latency_stats(v for r in ok for v in r.itl_ms),
        "tpot_ms": latency_stats(r.tpot_ms for r in ok if r.tpot_ms is not None),
        "e2e_ms": latency_stats(r.e2e_ms for r in ok),
        "ttft_response_ms": latency_stats(
            r.ttft_response_ms for r in ok if r.ttft_response_ms is not None
        ),
        "e2e_response_ms": latency_stats(r.e2e_response_ms for r in ok),
    }


def _slo_checks(
    stats: dict[str, LatencyStats], error_rate: float | None, slo: SLO
) -> list[SLOCheck]:
    checks = []
    source = {"ttft_ms": "ttft_response_ms", "e2e_ms": "e2e_response_ms"}
    for name, bound in slo.bounds().items():
        # the summary keeps p50..p99; other percentiles are computed by the caller's records
        key = source.get(name, name)
        measured = getattr(stats[key], f"p{bound.percentile:g}", None)
        checks.append(
            SLOCheck(
                metric=name,
                percentile=bound.percentile,
                limit=bound.max_ms,
                measured=measured,
                passed=None if measured is None else measured <= bound.max_ms,
            )
        )
    if slo.error_rate is not None:
        checks.append(
            SLOCheck(
                metric="error_rate",
                percentile=None,
                limit=slo.error_rate,
                measured=error_rate,
                passed=None if error_rate is None else error_rate <= slo.error_rate,
            )
        )
    return checks


def _percentile_of(records: Sequence[RequestRecord], name: str, q: float) -> float | None:
    values: list[float] = []
    for r in records:
        if name == "itl_ms":
            values.extend(r.itl_ms)
        else:
            v = _metric(r, name, q)
            if v is not None:
                values.append(v)
    return float(np.percentile(values, q)) if values else None


def _class_summary(recs: Sequence[RequestRecord], slo: SLO) -> ClassSummary:
    ok = [r for r in recs if r.ok]
    failed = [r for r in recs if not r.ok and r.error_kind != "cancelled"]
    return ClassSummary(
        requests_completed=len(ok),
        requests_failed=len(failed),
        slo_attainment=(sum(meets_slo(r, slo) for r in ok) / len(ok)) if ok else None,
        **_latencies(ok),
    )


def _in(t: float, window: tuple[float, float]) -> bool:
    return window[0] <= t <= window[1]


def summarize(
    records: Sequence[RequestRecord],
    window: tuple[float, float],
    slo: SLO,
    class_keys: Sequence[str] = (),
) -> Summary:
    """The summary of a run's records over the window (seconds since the start)."""
    measured = [r for r in records if r.in_window]
    ok = [r for r in measured if r.ok]
    cancelled = [r for r in measured if r.error_kind == "cancelled"]
    failed = [r for r in measured if not r.ok and r.error_kind != "cancelled"]
    attempted = len(ok) + len(failed)
    error_rate = len(failed) / attempted if attempted else None
    stats = _latencies(ok)
    length = window[1] - window[0]

    finished = [r for r in records if r.ok and _in(r.sent_s + r.e2e_ms / 1000, window)]
    tokens = 0.0
    for r in records:
        if r.ok and r.chunk_times_ms:
            inside = sum(_in(r.sent_s + t / 1000, window) for t in r.chunk_times_ms)
            tokens += r.output_tokens * inside / len(r.chunk_times_ms)
    per_s = (lambda n: n / length) if length > 0 else (lambda n: None)

    checks = _slo_checks(stats, error_rate, slo)
    for check in checks:  # percentiles the summary does not keep (e.g. p99.9)
        if check.percentile is not None and check.percentile not in _QUANTILES:
            check.measured = _percentile_of(ok, check.metric, check.percentile)
            check.passed = None if check.measured is None else check.measured <= check.limit
    verdicts = [c.passed for c in checks if c.passed is not None]

    classes: dict[str, dict[str, ClassSummary]] = {}
    for key in class_keys:
        groups: dict[str, list[RequestRecord]] = defaultdict(list)
        for r in measured:
            if key in r.classes:
                groups[r.classes[key]].append(r)
        classes[key] = {value: _class_summary(recs, slo) for value, recs in _sorted(groups)}

    excluded_failed = [
        r for r in records if not r.in_window and not r.ok and r.error_kind != "cancelled"
    ]
    run_tokens, run_s = _whole_run(records)
    return Summary(
        requests_completed=len(ok),
        requests_failed=len(failed),
        requests_cancelled=len(cancelled),
        requests_excluded=len(records) - len(measured),
        excluded_failed=len(excluded_failed),
        excluded_errors_by_kind=dict(
            Counter(r.error_kind for r in excluded_failed if r.error_kind)
        ),
        requests_short=sum(r.completed_short for r in ok),
        output_tokens_per_s_run=run_tokens / run_s if run_s else None,
        run_s=run_s,
        output_tokens_sources=dict(Counter(r.output_tokens_source for r in ok)),
        schedule_lateness_ms=latency_stats(r.lateness_ms for r in measured),
        lateness_by_worker_ms={
            str(w): latency_stats(r.lateness_ms for r in measured if r.worker == w)
            for w in sorted({r.worker for r in measured})
        },
        output_tokens_per_s=per_s(tokens),
        requests_per_s=per_s(len(finished)),
        # measured requests only: one sent in the warm-up that finished in the window is in
        # requests_per_s (throughput) but never in goodput
        goodput_rps=per_s(sum(r.in_window and meets_slo(r, slo) for r in finished)),
        error_rate=error_rate,
        errors_by_kind=dict(Counter(r.error_kind for r in failed if r.error_kind)),
        output_tokens_total=sum(r.output_tokens for r in ok),
        input_tokens_mean=(sum(r.input_tokens for r in ok) / len(ok)) if ok else None,
        window_s=window,
        slo=checks,
        slo_passed=all(verdicts) if verdicts else None,
        slo_attainment=(sum(meets_slo(r, slo) for r in ok) / len(ok)) if ok else None,
        classes=classes,
        **stats,
    )


def _whole_run(records: Sequence[RequestRecord]) -> tuple[float, float | None]:
    """Output tokens of every completed request, and seconds from the first send to the last
    answer's end: the whole-run rate, beside the window's (a slow server keeps streaming long
    after --duration)."""
    if not records:
        return 0.0, None
    first = min(r.sent_s for r in records)
    last = max(r.sent_s + r.e2e_ms / 1000 for r in records)
    tokens = float(sum(r.output_tokens for r in records if r.ok))
    return tokens, (last - first) if last > first else None


def _sorted(groups: dict[str, list[RequestRecord]]) -> list[tuple[str, list[RequestRecord]]]:
    """Class values in natural order: numbers numerically (turn 2 before turn 10)."""

    def key(item: tuple[str, list[RequestRecord]]) -> tuple[int, float, str]:
        value = item[0]
        try:
            return (0, float(value.rstrip("k")) * (1024 if value.endswith("k") else 1), value)
        except ValueError:
            return (1, 0.0, value)

    return sorted(groups.items(), key=key)

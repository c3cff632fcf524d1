"""Why an SLO bound failed, in one sentence each, and what to try next.

The reason comes from what moved: the client's own lateness, requests queueing on the server,
a full KV cache (from the target's /metrics when it has them), or the measured prefill and
decode times themselves."""

from __future__ import annotations

from dataclasses import dataclass

from deploylab.loadtest.findings import LATENESS_P99_MS, error_message
from deploylab.loadtest.results import Results, SLOCheck

_KV_FULL = 0.9  # KV-cache usage at or above this counts as full


@dataclass(frozen=True)
class ServerSignals:
    """What the target's metrics said during the measured window (None: not scraped)."""

    waiting_max: float | None = None
    waiting_mean: float | None = None
    running_max: float | None = None
    kv_usage_max: float | None = None


def server_signals(results: Results) -> ServerSignals:
    """Peaks and means of the server series inside the measured window."""
    metrics = results.server_metrics
    if metrics is None or not metrics.available:
        return ServerSignals()
    lo, hi = results.summary.window_s

    def values(key: str) -> list[float]:
        series = metrics.series.get(key)
        if series is None:
            return []
        pairs = zip(series.t_s, series.values, strict=False)
        return [v for t, v in pairs if v is not None and lo <= t <= hi]

    waiting, running = values("requests_waiting"), values("requests_running")
    kv = values("kv_cache_usage")
    return ServerSignals(
        waiting_max=max(waiting) if waiting else None,
        waiting_mean=sum(waiting) / len(waiting) if waiting else None,
        running_max=max(running) if running else None,
        kv_usage_max=max(kv) if kv else None,
    )


def _label(c: SLOCheck) -> str:
    return c.metric if c.percentile is None else f"{c.metric.removesuffix('_ms')} p{c.percentile:g}"


def _why_latency(check: SLOCheck, results: Results, sig: ServerSignals) -> str:
    s = results.summary
    late = s.schedule_lateness_ms.p99
    if late is not None and late > LATENESS_P99_MS and check.metric in ("ttft_ms", "e2e_ms"):
        return f"the client sent late (schedule lateness p99 {late:.0f} ms)"
    if sig.kv_usage_max is not None and sig.kv_usage_max >= _KV_FULL:
        return f"the KV cache was full (peak {100 * sig.kv_usage_max:.0f} %), so requests waited"
    if sig.waiting_max is not None and sig.waiting_max >= 1 and check.metric != "itl_ms":
        return (
            f"requests queued on the server (up to {sig.waiting_max:.0f} waiting, "
            f"{sig.waiting_mean or 0:.1f} on average)"
        )
    running = "" if sig.running_max is None else f" with up to {sig.running_max:.0f} running"
    if check.metric in ("itl_ms", "tpot_ms"):
        itl = s.itl_ms.p50
        return f"decode is slow: {itl or 0:.0f} ms per token at the median{running}"
    if check.metric == "ttft_ms":
        tokens = s.input_tokens_mean or 0
        return (
            f"prefill is slow: TTFT p50 {s.ttft_ms.p50 or 0:.0f} ms for about {tokens:.0f} "
            f"input tokens{running}"
        )
    ttft, tpot = s.ttft_response_ms.p50 or 0, s.tpot_ms.p50 or 0
    return f"each answer is long to produce: TTFT p50 {ttft:.0f} ms then {tpot:.0f} ms per token"


def _why_errors(results: Results) -> str:
    kinds = results.summary.errors_by_kind
    if not kinds:
        return "requests failed"
    kind, n = max(kinds.items(), key=lambda kv: kv[1])
    detail = next(
        (r.error_detail for r in results.requests if r.error_kind == kind and r.error_detail), ""
    )
    message = error_message(detail)
    said = f" ({message[:200]})" if message else ""
    return f"{n} requests failed with {kind}{said}"


def explain_failures(results: Results) -> list[str]:
    """One sentence per failed SLO bound: what it measured, why, and what to try next."""
    sig = server_signals(results)
    out = []
    for c in results.summary.slo:
        if c.passed is not False:
            continue
        if c.metric == "error_rate":
            why = _why_errors(results)
            out.append(
                f"{_label(c)} {100 * (c.measured or 0):.1f} % > {100 * c.limit:.1f} %: {why}."
            )
        else:
            why = _why_latency(c, results, sig)
            out.append(f"{_label(c)} {c.measured or 0:.0f} ms > {c.limit:g} ms: {why}.")
    return out


def next_steps(results: Results) -> str | None:
    """What to try when the SLO was missed (None when it was met or not judged)."""
    if results.summary.slo_passed is not False:
        return None
    failed = [c.metric for c in results.summary.slo if c.passed is False]
    if failed == ["error_rate"]:  # the latencies held: more or less load is not the answer
        fit = " (see the warning about max_model_len)" if results.notes else ""
        return (
            f"try next: remove the cause of the errors{fit}, then run again; the latency "
            "bounds held."
        )
    load = results.config.load
    lower = (
        f"a lower --concurrency than {load.concurrency}"
        if load.concurrency is not None
        else (f"a lower --rate than {load.rate:g}" if load.rate is not None else "less load")
    )
    name = results.scenario.name
    text = (
        f"try next: `deploylab loadtest sweep --scenario {name}` to find the load that meets "
        f"these SLOs, {lower}, or a faster engine or GPU"
    )
    profiles = results.scenario.definition.get("slo_profiles") or {}
    if "cpu" in profiles and results.config.slo_profile != "cpu":
        text += "; on a CPU-only machine, `--slo-profile cpu` judges by bounds set for CPU serving"
    return text + "."

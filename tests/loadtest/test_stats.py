"""Aggregates on hand-made records: the measurement window of an interrupted run, goodput."""

from __future__ import annotations

from deploylab.loadtest.client import RawRecord
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.records import measurement_window, to_record
from deploylab.loadtest.results import RequestRecord
from deploylab.loadtest.scenario import SLO
from deploylab.loadtest.stats import summarize

S = 1_000_000_000  # ns per second


def raw(sent_s: float, e2e_s: float, *, ok: bool = True, index: int = 0) -> RawRecord:
    sent = int(sent_s * S)
    end = sent + int(e2e_s * S)
    rec = RawRecord(index, 1, 0, "m", None, {}, 10, 4, scheduled_ns=sent, sent_ns=sent)
    rec.end_ns = end
    if ok:
        rec.chunk_ns = [sent + (end - sent) * (k + 1) // 4 for k in range(4)]
        rec.completion_tokens = 4
    else:
        rec.error_kind, rec.error_detail, rec.status = "http_400", "too long", 400
    return rec


def records(raws: list[RawRecord], window: tuple[float, float]) -> list[RequestRecord]:
    return [to_record(r, 0, (len(r.chunk_ns), "chunks"), window) for r in raws]


def test_the_window_of_an_interrupted_run_ends_at_the_interruption() -> None:
    """Ctrl-C 11 s into a 60 s run at 5 req/s: the rate is 5 req/s, not 55/60."""
    load = LoadConfig(rate=5, duration_s=60, warmup_s=0, cooldown_s=5)
    raws = [raw(i / 5, 0.1, index=i) for i in range(55)]
    window = measurement_window(raws, 0, load, stopped_ns=11 * S)
    assert window == (0.0, 11.0)  # no cool-down: the run never reached it
    summary = summarize(records(raws, window), window, SLO())
    assert summary.requests_per_s is not None and 4.5 <= summary.requests_per_s <= 5.0
    assert summary.goodput_rps == summary.requests_per_s
    # not interrupted: the planned duration (minus the cool-down) stays the window
    assert measurement_window(raws, 0, load) == (0.0, 55.0)


def test_requests_sent_in_the_workers_stop_lag_stay_inside_the_window() -> None:
    """A worker notices Ctrl-C up to a poll interval late: what it scheduled meanwhile is in
    the results, so the window reaches it (the window never excludes a counted request)."""
    load = LoadConfig(rate=20, duration_s=60, warmup_s=0, cooldown_s=0)
    raws = [raw(i / 20, 5.0, index=i) for i in range(11)]  # the last one at 0.50 s
    window = measurement_window(raws, 0, load, stopped_ns=int(0.475 * S))
    assert window == (0.0, 0.5)


def test_an_interruption_after_the_planned_end_keeps_the_planned_window() -> None:
    load = LoadConfig(concurrency=1, duration_s=10, warmup_s=1, cooldown_s=1)
    raws = [raw(i, 0.5, index=i) for i in range(10)]
    assert measurement_window(raws, 0, load, stopped_ns=30 * S) == (1.0, 9.0)


def test_goodput_is_zero_when_no_measured_request_completed() -> None:
    """Requests of the warm-up finishing inside the window are throughput, never goodput."""
    load = LoadConfig(rate=1, duration_s=30, warmup_s=5, cooldown_s=0)
    warm = [raw(i, 6.0, index=i) for i in range(5)]  # sent in warm-up, done at 6-10 s
    failed = [raw(5 + i, 0.01, ok=False, index=5 + i) for i in range(20)]
    raws = warm + failed
    window = measurement_window(raws, 0, load)
    summary = summarize(records(raws, window), window, SLO(error_rate=0.01))
    assert summary.requests_completed == 0 and summary.requests_failed == 20
    assert summary.goodput_rps == 0.0
    assert summary.requests_per_s is not None and summary.requests_per_s > 0


def test_goodput_never_exceeds_measured_completions() -> None:
    load = LoadConfig(rate=2, duration_s=20, warmup_s=2, cooldown_s=2)
    raws = [raw(i / 2, 1.0, index=i) for i in range(40)]
    window = measurement_window(raws, 0, load)
    recs = records(raws, window)
    summary = summarize(recs, window, SLO())
    measured_done = sum(
        r.in_window and r.ok and window[0] <= r.sent_s + r.e2e_ms / 1000 <= window[1] for r in recs
    )
    assert summary.goodput_rps is not None
    assert summary.goodput_rps * (window[1] - window[0]) == measured_done


def test_a_late_client_is_told_to_add_workers() -> None:
    from deploylab.loadtest.findings import lateness_warning

    load = LoadConfig(rate=2, duration_s=10)
    raws = [raw(i / 2, 0.1, index=i) for i in range(20)]
    for k, r in enumerate(raws):
        r.sent_ns = r.scheduled_ns + (12_000_000 if k % 2 else 100_000)  # 12 ms late, half
    window = measurement_window(raws, 0, load)
    late = summarize(records(raws, window), window, SLO())
    warning = lateness_warning(late)
    assert warning is not None and "p99 12.0 ms" in warning and "--workers" in warning
    on_time = [raw(i / 2, 0.1, index=i) for i in range(20)]
    assert lateness_warning(summarize(records(on_time, window), window, SLO())) is None


def test_an_overloaded_worker_is_named() -> None:
    """Two workers, only worker 1 sends late: its own lateness and the warning name it."""
    from deploylab.loadtest.findings import lateness_warning

    load = LoadConfig(rate=2, duration_s=10)
    raws = [raw(i / 2, 0.1, index=i) for i in range(20)]
    for k, r in enumerate(raws):
        r.worker = k % 2
        if r.worker == 1:
            r.sent_ns = r.scheduled_ns + 30_000_000  # 30 ms late
    window = measurement_window(raws, 0, load)
    summary = summarize(records(raws, window), window, SLO())
    by_worker = summary.lateness_by_worker_ms
    assert by_worker["0"].p99 == 0 and by_worker["1"].p50 == 30.0
    warning = lateness_warning(summary)
    assert warning is not None and "Late workers: 1 (p99 30.0 ms) of 2" in warning


def test_error_messages_are_read_out_of_json_error_bodies() -> None:
    from deploylab.loadtest.findings import error_message

    body = '{"error":{"message":"This model\'s maximum context length is 8192 tokens.","code":400}}'
    assert error_message(body) == "This model's maximum context length is 8192 tokens."
    assert error_message('HTTP 503: {"detail": "overloaded"}') == "HTTP 503: overloaded"
    assert error_message("connection reset\nby peer") == "connection reset by peer"
    assert error_message(None) == ""


def _judged(waiting: float, kv: float) -> object:
    """A 10 s run at 2 req/s whose TTFT misses a 100 ms bound, with server series."""
    from datetime import UTC, datetime

    from deploylab.loadtest.results import Results, RunConfig, ScenarioInfo, TargetInfo
    from deploylab.loadtest.scrape import MetricSeries, ServerMetrics

    load = LoadConfig(rate=2, duration_s=10)
    raws = [raw(i / 2, 0.5, index=i) for i in range(20)]  # first chunk at 125 ms
    window = measurement_window(raws, 0, load)
    slo = SLO.model_validate({"ttft_ms": {"p99": 100}})
    recs = records(raws, window)

    def series(value: float) -> MetricSeries:
        return MetricSeries(title="x", unit="", kind="gauge", sources=["x"],
                            t_s=[float(t) for t in range(11)], values=[value] * 11)  # fmt: skip

    metrics = ServerMetrics(
        url="http://x/metrics", interval_s=1, available=True, scrapes=11,
        series={"requests_waiting": series(waiting), "requests_running": series(8),
                "kv_cache_usage": series(kv)},
    )  # fmt: skip
    now = datetime.now(UTC)
    return Results(
        scenario=ScenarioInfo(name="s", source="s", description="", bottleneck="",
                              workload_kind="synthetic", definition={}),
        target=TargetInfo(url="http://x", models_served=None, default_model="m", model_map={}),
        config=RunConfig(load=load, mode="open", api="chat", tokenizer=None,
                         exact_token_counts=False, deploylab_version="0"),
        started_at=now, finished_at=now, summary=summarize(recs, window, slo), requests=recs,
        server_metrics=metrics,
    )  # fmt: skip


def test_each_failed_bound_says_which_server_metric_moved() -> None:
    from deploylab.loadtest.explain import explain_failures, next_steps

    queued = explain_failures(_judged(waiting=5, kv=0.4))  # type: ignore[arg-type]
    assert len(queued) == 1 and "requests queued on the server (up to 5 waiting" in queued[0]
    full = explain_failures(_judged(waiting=5, kv=0.97))  # type: ignore[arg-type]
    assert "the KV cache was full (peak 97 %)" in full[0]
    prefill = explain_failures(_judged(waiting=0, kv=0.2))  # type: ignore[arg-type]
    assert "prefill is slow" in prefill[0] and "up to 8 running" in prefill[0]
    step = next_steps(_judged(waiting=5, kv=0.4))  # type: ignore[arg-type]
    assert step is not None and "a lower --rate than 2" in step

"""The charts of one run's report: latency CDFs, latency and load over time, output tokens/s,
the server's metrics and the capacity curve. Each function returns inline SVG."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from deploylab.loadtest.capacity import Capacity
from deploylab.loadtest.report.charts import (
    PALETTE,
    SLO_COLOR,
    figure,
    legend_below,
    legend_right,
    log_scale_if_wide,
    no_data,
    to_svg,
)
from deploylab.loadtest.report.series import TimeBins, cdf, latency_values
from deploylab.loadtest.results import Results, SLOCheck
from deploylab.loadtest.scrape import MetricSeries

CDF_METRICS = {  # metric -> (title, [(record field, label)])
    "ttft_ms": ("TTFT", [("ttft_ms", "service"), ("ttft_response_ms", "response")]),
    "itl_ms": ("Inter-token latency", [("itl_ms", "ITL")]),
    "tpot_ms": ("TPOT", [("tpot_ms", "TPOT")]),
    "e2e_ms": ("End-to-end latency", [("e2e_ms", "service"), ("e2e_response_ms", "response")]),
}


def slo_limit(checks: Sequence[SLOCheck], metric: str) -> SLOCheck | None:
    """The SLO bound on a latency metric, if the scenario sets one."""
    return next((c for c in checks if c.metric == metric), None)


def latency_cdf(results: Results, metric: str) -> str:
    """Empirical CDF of one latency; service time solid, response time dashed, SLO in red."""
    title, fields = CDF_METRICS[metric]
    with figure(5.2, 3.0) as fig:
        ax = fig.subplots()
        drawn: list[float] = []
        for i, (field, label) in enumerate(fields):
            x, y = cdf(latency_values(results.requests, field))
            if x.size:
                ax.step(x, y, where="post", color=PALETTE[0], ls="-" if i == 0 else "--",
                        label=label)  # fmt: skip
                drawn.extend(x.tolist())
        check = slo_limit(results.summary.slo, metric)
        if check is not None and drawn:
            ax.axvline(check.limit, color=SLO_COLOR, ls=":", lw=1.4,
                       label=f"SLO p{check.percentile:g} ≤ {check.limit:g}")  # fmt: skip
            drawn.append(check.limit)
        if drawn:
            log_scale_if_wide(ax, drawn)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("ms")
            ax.set_ylabel("share of requests")
            ax.legend(loc="lower right")
        else:
            no_data(ax, f"no {title} measured")
        ax.set_title(f"{title} CDF")
        return to_svg(fig)


def _shade_excluded(ax: object, window: tuple[float, float], end: float) -> None:
    """Grey out warm-up and cool-down: they are not in the statistics."""
    lo, hi = window
    if lo > 0:
        ax.axvspan(0, lo, color="#eeeeee", lw=0)  # type: ignore[attr-defined]
    if hi < end:
        ax.axvspan(hi, end, color="#eeeeee", lw=0)  # type: ignore[attr-defined]


def over_time(results: Results, bins: TimeBins) -> str:
    """TTFT and E2E (p50, p99 per interval) above the request rate, on one time axis."""
    window = results.summary.window_s
    end = float(bins.t[-1] + bins.width_s / 2)
    with figure(10.5, 6.4) as fig:
        ax_ttft, ax_e2e, ax_rate = fig.subplots(3, 1, sharex=True, height_ratios=[1.2, 1.2, 1])
        for ax, (p50, p99, name, metric) in zip(
            (ax_ttft, ax_e2e),
            ((bins.ttft_p50, bins.ttft_p99, "TTFT", "ttft_ms"),
             (bins.e2e_p50, bins.e2e_p99, "E2E", "e2e_ms")),
            strict=True,
        ):  # fmt: skip
            _shade_excluded(ax, window, end)
            # p99 first, as large hollow rings with a dashed line; p50 on top as smaller filled
            # dots: where an interval holds one request the two coincide and both stay visible
            ax.plot(bins.t, p99, color=PALETTE[1], ls="--", marker="o", ms=7, mfc="none",
                    mew=1.3, zorder=2, label=f"{name} p99", gid=f"{metric}-p99")  # fmt: skip
            ax.plot(bins.t, p50, color=PALETTE[0], marker="o", ms=4, zorder=3,
                    label=f"{name} p50", gid=f"{metric}-p50")  # fmt: skip
            check = slo_limit(results.summary.slo, metric)
            if check is not None:
                ax.axhline(check.limit, color=SLO_COLOR, ls=":", lw=1.4, label="SLO")
            ax.set_ylabel(f"{name} (ms, response)")
            legend_right(ax)
        ax_ttft.set_title("Latency and load over time (grey: warm-up / cool-down, excluded)")
        _shade_excluded(ax_rate, window, end)
        ax_rate.plot(bins.t, bins.sent_per_s, color=PALETTE[2], label="sent")
        ax_rate.plot(bins.t, bins.done_per_s, color=PALETTE[0], label="completed")
        if bins.failed_per_s.any():
            ax_rate.plot(bins.t, bins.failed_per_s, color=SLO_COLOR, label="failed")
        ax_rate.set_ylabel("requests/s")
        ax_rate.set_xlabel("seconds since start")
        legend_right(ax_rate)
        ax_rate.set_xlim(0, end)
        return to_svg(fig)


def tokens_over_time(results: Results, bins: TimeBins) -> str:
    """Output tokens/s delivered to the client per interval."""
    end = float(bins.t[-1] + bins.width_s / 2)
    with figure(10.5, 2.8) as fig:
        ax = fig.subplots()
        _shade_excluded(ax, results.summary.window_s, end)
        ax.plot(bins.t, bins.tokens_per_s, color=PALETTE[4], label="output tokens/s")
        mean = results.summary.output_tokens_per_s
        if mean is not None:
            ax.axhline(mean, color="#555555", ls="--", lw=1, label=f"window mean {mean:.1f}")
        ax.set_xlim(0, end)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("tokens/s")
        ax.set_title("Output tokens/s (client side)")
        legend_right(ax)
        return to_svg(fig)


SERVER_PANELS = (  # (title, y label, [series keys])
    ("Requests on the server", "requests", ["requests_running", "requests_waiting"]),
    ("KV-cache usage", "fraction (1 = full)", ["kv_cache_usage"]),
    ("Prefix-cache hit rate", "hits / lookups", ["prefix_cache_hit_rate"]),
    ("Token throughput (server counters)", "tokens/s",
     ["prompt_tokens_per_s", "generation_tokens_per_s"]),
    ("KV tiers: hit rate", "hits / lookups", ["external_prefix_cache_hit_rate"]),
    ("KV tiers: bytes moved", "bytes/s", ["kv_host_load_bytes_per_s", "kv_disk_load_bytes_per_s",
     "kv_host_store_bytes_per_s", "kv_disk_store_bytes_per_s"]),
)  # fmt: skip


def server_panels(series: dict[str, MetricSeries]) -> list[tuple[str, list[str], str]]:
    """(title, source metric names, svg) for each server panel that has data."""
    out = []
    for title, ylabel, keys in SERVER_PANELS:
        present = [k for k in keys if k in series and any(v is not None for v in series[k].values)]
        if not present:
            continue
        with figure(5.2, 3.1) as fig:
            ax = fig.subplots()
            for i, key in enumerate(present):
                s = series[key]
                values = [math.nan if v is None else v for v in s.values]
                ax.plot(s.t_s, values, color=PALETTE[i], marker=".", label=s.title)
            ax.set_xlabel("seconds since start")
            ax.set_ylabel(ylabel)
            if ylabel.startswith(("fraction", "hits")):
                ax.set_ylim(-0.02, 1.02)
            ax.set_title(title)
            legend_below(fig, ax)
            names = sorted({n for k in present for n in series[k].sources})
            out.append((title, names, to_svg(fig)))
    return out


def capacity_latency(capacity: Capacity, checks: Sequence[SLOCheck]) -> str:
    """p50/p99 TTFT and E2E against the offered load, with the SLO bounds and the capacity."""
    steps = sorted((s for s in capacity.steps if s.phase == "search"), key=lambda s: s.load)
    x = [s.load for s in steps]
    with figure(5.2, 3.8) as fig:
        ax = fig.subplots()
        lines = (
            ("ttft_ms_p50", "TTFT p50", PALETTE[0], "--"),
            ("ttft_ms_p99", "TTFT p99", PALETTE[0], "-"),
            ("e2e_ms_p50", "E2E p50", PALETTE[1], "--"),
            ("e2e_ms_p99", "E2E p99", PALETTE[1], "-"),
        )
        ys: list[float] = []
        for attr, label, color, ls in lines:
            y = [math.nan if getattr(s, attr) is None else getattr(s, attr) for s in steps]
            ax.plot(x, y, color=color, ls=ls, marker="o", ms=4, label=label)
            ys.extend(v for v in y if not math.isnan(v))
        for metric, color in (("ttft_ms", PALETTE[0]), ("e2e_ms", PALETTE[1])):
            check = slo_limit(checks, metric)
            if check is not None:
                ax.axhline(check.limit, color=color, ls=":", lw=1.2)
                ys.append(check.limit)
        _mark_capacity(ax, capacity)
        log_scale_if_wide(ax, ys, "y")
        ax.set_xlabel(_load_label(capacity))
        ax.set_ylabel("ms (response time)")
        ax.set_title("Latency vs load (dotted: SLO bounds)")
        legend_below(fig, ax)
        return to_svg(fig)


def capacity_goodput(capacity: Capacity) -> str:
    """Achieved throughput and goodput against the offered load."""
    steps = sorted((s for s in capacity.steps if s.phase == "search"), key=lambda s: s.load)
    x = np.array([s.load for s in steps])
    with figure(5.2, 3.8) as fig:
        ax = fig.subplots()
        for attr, label, color in (
            ("requests_per_s", "achieved req/s", PALETTE[2]),
            ("goodput_rps", "goodput (meets every SLO)", PALETTE[3]),
        ):
            y = [math.nan if getattr(s, attr) is None else getattr(s, attr) for s in steps]
            ax.plot(x, y, color=color, marker="o", ms=4, label=label)
        if capacity.by == "rate" and x.size:
            ax.plot(x, x, color="#999999", ls="--", lw=1, label="offered")
        _mark_capacity(ax, capacity)
        ax.set_xlabel(_load_label(capacity))
        ax.set_ylabel("requests/s")
        ax.set_title("Goodput vs load")
        legend_below(fig, ax)
        return to_svg(fig)


def _load_label(capacity: Capacity) -> str:
    return "offered load (req/s)" if capacity.by == "rate" else "concurrency (requests in flight)"


def _mark_capacity(ax: object, capacity: Capacity) -> None:
    if capacity.capacity is not None:
        ax.axvline(capacity.capacity, color=SLO_COLOR, lw=1.2,  # type: ignore[attr-defined]
                   label=f"capacity {capacity.capacity:.4g}")  # fmt: skip

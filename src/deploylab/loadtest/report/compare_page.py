"""`compare.html`: runs side by side, summary deltas against the first run (with the
direction of better), overlaid latency CDFs, and the `--fail-if` gate's outcome."""

from __future__ import annotations

import math
from collections.abc import Sequence

from deploylab.loadtest.compare import (
    Delta,
    GateCheck,
    comparability_warnings,
    deltas,
    metric_names,
)
from deploylab.loadtest.report.charts import PALETTE, figure, log_scale_if_wide, no_data, to_svg
from deploylab.loadtest.report.html import Cell, esc, num, page, plot, table, verdict_banner
from deploylab.loadtest.report.series import cdf, latency_values
from deploylab.loadtest.results import Results

_CDFS = (
    ("ttft_ms", "TTFT (service)"),
    ("itl_ms", "Inter-token latency"),
    ("tpot_ms", "TPOT"),
    ("e2e_ms", "End-to-end latency (service)"),
)
_SHOWN = [
    "ttft_ms.p50", "ttft_ms.p99", "ttft_response_ms.p99", "itl_ms.p50", "itl_ms.p99",
    "tpot_ms.p50", "tpot_ms.p99", "e2e_ms.p50", "e2e_ms.p99", "e2e_response_ms.p99",
    "schedule_lateness_ms.p99", "requests_per_s", "output_tokens_per_s", "goodput_rps",
    "slo_attainment", "error_rate", "requests_completed", "requests_failed", "capacity",
]  # fmt: skip
assert set(_SHOWN) <= set(metric_names())


def overlaid_cdf(runs: Sequence[Results], labels: Sequence[str], metric: str, title: str) -> str:
    """One latency's CDF for every run, one colour each."""
    with figure(5.2, 3.0) as fig:
        ax = fig.subplots()
        drawn: list[float] = []
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            x, y = cdf(latency_values(run.requests, metric))
            if x.size:
                ax.step(x, y, where="post", color=PALETTE[i % len(PALETTE)], label=label)
                drawn.extend(x.tolist())
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


def _value(name: str, value: float | None) -> str:
    if name in ("error_rate", "slo_attainment"):
        return "-" if value is None else f"{100 * value:.2f} %"
    if name in ("requests_completed", "requests_failed") and value is not None:
        return f"{int(value):,}"
    return num(value, 2 if name.endswith("_rps") or name == "requests_per_s" else 1)


def _change(delta: Delta, i: int) -> Cell:
    change, verdict = delta.changes[i], delta.verdicts[i]
    if change is None:
        return ("-", "na")
    text = ("+∞" if change > 0 else "-∞") if math.isinf(change) else f"{100 * change:+.1f} %"
    return (text, verdict)


def _deltas_table(runs: Sequence[Results], labels: Sequence[str]) -> str:
    headers = ["metric", "better", f"{labels[0]} (baseline)"]
    for label in labels[1:]:
        headers += [label, "change"]
    rows = []
    for d in deltas(runs, _SHOWN):
        row: list[Cell] = [esc(d.metric), "↓ lower" if d.better == "lower" else "↑ higher"]
        row.append(_value(d.metric, d.values[0]))
        for i in range(1, len(runs)):
            row += [_value(d.metric, d.values[i]), _change(d, i)]
        rows.append(row)
    return table(headers, rows, "deltas")


def _runs_table(runs: Sequence[Results], labels: Sequence[str], paths: Sequence[str]) -> str:
    rows = []
    for run, label, path in zip(runs, labels, paths, strict=True):
        load = run.config.load
        shape = (
            f"concurrency {load.concurrency}"
            if load.concurrency
            else (f"{load.rate:g} req/s {load.arrival}" if load.rate else "trace")
        )
        verdict = {True: ("met", "pass"), False: ("missed", "fail"), None: ("unknown", "na")}
        rows.append(
            [
                esc(label),
                f"<code>{esc(path)}</code>",
                esc(run.scenario.name),
                esc(run.target.url),
                esc(shape),
                esc(run.started_at.strftime("%Y-%m-%d %H:%M")),
                num(run.summary.requests_completed),
                verdict[run.summary.slo_passed],
            ]
        )
    headers = ["run", "results", "scenario", "target", "load", "started", "completed", "SLO"]
    return table(headers, rows, "runs")


def _gate_section(checks: Sequence[GateCheck]) -> str:
    failed = [c for c in checks if c.failed]
    word = "Regression gate failed" if failed else "Regression gate passed"
    banner = (
        f'<div class="verdict {"missed" if failed else "met"}" id="gate-verdict" '
        f'data-verdict="{"failed" if failed else "passed"}">{word}<small>'
        f"{len(failed)} of {len(checks)} checks failed.</small></div>"
    )
    rows = [
        [
            f"<code>{esc(c.rule.text)}</code>",
            esc(c.run),
            esc(c.detail),
            ("FAIL", "fail") if c.failed else ("ok", "pass"),
        ]
        for c in checks
    ]
    return "<h2>Regression gate</h2>" + banner + table(["rule", "run", "measured", "result"], rows)


def render_compare(
    runs: Sequence[Results],
    labels: Sequence[str],
    paths: Sequence[str],
    checks: Sequence[GateCheck] = (),
) -> str:
    """The comparison page; the first run is the baseline."""
    verdicts = [r.summary.slo_passed for r in runs]
    if all(v is True for v in verdicts):
        overall: bool | None = True
    elif any(v is False for v in verdicts):
        overall = False
    else:
        overall = None
    missed = [label for label, v in zip(labels, verdicts, strict=True) if v is False]
    detail = (
        f"SLO missed by: {', '.join(missed)}." if missed else "Every run met its scenario's SLOs."
    )
    if overall is None:
        detail = "Some runs have no SLO verdict."
    parts = [
        f"<h1>Comparison of {len(runs)} load-test runs</h1>",
        f'<p class="muted">Baseline: {esc(labels[0])}. Changes are relative to it; green is '
        "better, red worse (changes within 2 % count as the same).</p>",
        verdict_banner(overall, detail),
    ]
    warnings = comparability_warnings(runs, labels)
    if warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
        parts.append(
            f'<div id="compare-warnings" class="fail"><b>Read with care:</b><ul>{items}</ul></div>'
        )
    parts.append(_runs_table(runs, labels, paths))
    if checks:
        parts.append(_gate_section(checks))
    parts.append("<h2>Summary deltas</h2>" + _deltas_table(runs, labels))
    figures = "".join(
        plot(f"compare-cdf-{m}", overlaid_cdf(runs, labels, m, title), f"{title}, every run.")
        for m, title in _CDFS
    )
    parts.append(f'<h2>Latency distributions</h2><div class="grid">{figures}</div>')
    return page("deploylab comparison: " + " vs ".join(labels), "\n".join(parts))

"""`report.html` of one run: the SLO verdict up front with why each bound failed, then the
server metrics (the why), capacity (after a sweep), summary, latency CDFs, latency and load
over time, per-class tables, errors, and the exact configuration and target."""

from __future__ import annotations

import json
import re

from deploylab.loadtest.capacity import Capacity
from deploylab.loadtest.explain import explain_failures, next_steps
from deploylab.loadtest.findings import error_examples, run_findings, token_source
from deploylab.loadtest.report import run_plots
from deploylab.loadtest.report.html import esc, num, page, pct, plot, table, verdict_banner
from deploylab.loadtest.report.series import time_bins
from deploylab.loadtest.results import LatencyStats, Results, SLOCheck

_STATS = ("mean", "p50", "p90", "p95", "p99", "max")


def _check_label(c: SLOCheck) -> str:
    return c.metric if c.percentile is None else f"{c.metric} p{c.percentile:g}"


def _slo_section(results: Results) -> str:
    s = results.summary
    checks = s.slo
    held = sum(c.passed is True for c in checks)
    detail = (
        f"{held} of {len(checks)} SLO bounds held; {pct(s.slo_attainment)} of completed "
        f"requests met every bound; goodput {num(s.goodput_rps, 2)} req/s of "
        f"{num(s.requests_per_s, 2)} req/s completed."
    )
    if not checks:
        detail = "The scenario sets no SLO."
    rows = []
    for c in checks:
        is_rate = c.metric == "error_rate"
        result = {True: ("pass", "pass"), False: ("FAIL", "fail"), None: ("n/a", "na")}[c.passed]
        rows.append(
            [
                esc(_check_label(c)),
                pct(c.limit, 2) if is_rate else num(c.limit),
                pct(c.measured, 2) if is_rate else num(c.measured),
                result,
            ]
        )
    note = (
        '<p class="muted">TTFT and E2E are checked on response time (from the scheduled '
        "send, so client backlog counts); ITL and TPOT on the stream.</p>"
    )
    return (
        verdict_banner(s.slo_passed, detail)
        + table(["SLO bound", "limit", "measured", "result"], rows, "slo")
        + note
        + _why_section(results)
    )


def _code(html: str) -> str:
    """`quoted` commands as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html)


def _why_section(results: Results) -> str:
    """Why each bound failed, what to try next, and warnings about the run itself."""
    reasons = explain_failures(results)
    step = next_steps(results)
    out = ""
    if reasons or step:
        items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
        tail = f"<p>{_code(esc(step[0].upper() + step[1:]))}</p>" if step else ""
        out += f'<div id="slo-why"><b>Why:</b><ul>{items}</ul>{tail}</div>'
    profile = results.config.slo_profile
    if profile:
        out += f'<p class="muted">SLO profile: {esc(profile)}.</p>'
    return out + _notes(run_findings(results), "run-warnings")


def _latency_rows(stats: dict[str, LatencyStats]) -> list[list[str]]:
    return [
        [esc(name), num(st.count)] + [num(getattr(st, k)) for k in _STATS]
        for name, st in stats.items()
    ]


def _summary_section(results: Results) -> str:
    s = results.summary
    cards = [
        ("completed", num(s.requests_completed)),
        ("failed", num(s.requests_failed)),
        ("requests/s", num(s.requests_per_s, 2)),
        ("goodput req/s", num(s.goodput_rps, 2)),
        ("output tokens/s", num(s.output_tokens_per_s)),
        ("error rate", pct(s.error_rate, 2)),
    ]
    card_html = "".join(f'<div class="card">{esc(k)}<b>{v}</b></div>' for k, v in cards)
    lat = {
        "TTFT (service)": s.ttft_ms,
        "TTFT (response)": s.ttft_response_ms,
        "ITL": s.itl_ms,
        "TPOT": s.tpot_ms,
        "E2E (service)": s.e2e_ms,
        "E2E (response)": s.e2e_response_ms,
        "schedule lateness": s.schedule_lateness_ms,
    }
    lo, hi = s.window_s
    source = token_source(s)
    extra = (
        f'<p class="muted">Measured window {lo:.1f}–{hi:.1f} s; {s.requests_excluded} requests '
        f"sent in warm-up or cool-down excluded ({s.excluded_failed} of them failed), "
        f"{s.requests_cancelled} cancelled, {s.requests_short} completed short. "
        f"{num(s.output_tokens_total)} output tokens; mean input {num(s.input_tokens_mean)} "
        f"tokens.{' ' + esc(source) + '.' if source else ''}</p>"
    )
    return (
        "<h2>Summary</h2>"
        f'<div class="cards">{card_html}</div>'
        + table(["latency (ms)", "count", *_STATS], _latency_rows(lat))
        + extra
    )


def _capacity_section(cap: Capacity, checks: list[SLOCheck]) -> str:
    value = "none" if cap.capacity is None else f"{cap.capacity:.4g} {cap.unit}"
    why = {
        "slo": f"highest load that met every SLO; {cap.lowest_failed or 0:.4g} missed",
        "max_load": "the SLOs held up to the highest load allowed (--max-load)",
        "max_steps": "the SLOs held at every load tried; the step budget ran out first",
        "no_passing_load": "even the lowest load tried missed the SLO",
    }[cap.limited_by]
    cards = [("capacity", value), ("found by", esc(why))]
    if cap.saturation_rps is not None:
        cards.append(
            (f"saturation (concurrency {cap.probe_concurrency})", f"{cap.saturation_rps:.3g} req/s")
        )
    card_html = "".join(f'<div class="card">{esc(k)}<b>{v}</b></div>' for k, v in cards)
    rows = []
    for st in cap.steps:
        result = {True: ("pass", "pass"), False: ("miss", "fail"), None: ("-", "na")}[st.passed]
        if st.phase == "probe" and cap.by == "rate":
            result = ("probe", "na")
        rows.append(
            [
                str(st.index),
                esc(st.phase),
                f"{'concurrency' if st.mode == 'closed' else 'rate'} {st.load:.4g}",
                num(st.requests_per_s, 2),
                num(st.goodput_rps, 2),
                num(st.ttft_ms_p50),
                num(st.ttft_ms_p99),
                num(st.e2e_ms_p50),
                num(st.e2e_ms_p99),
                pct(st.error_rate, 2),
                num(st.margin, 2),
                result,
            ]
        )
    headers = ["step", "phase", "load", "req/s", "goodput", "TTFT p50", "TTFT p99",
               "E2E p50", "E2E p99", "errors", "margin", "SLO"]  # fmt: skip
    plots = '<div class="grid">' + plot(
        "capacity-latency",
        run_plots.capacity_latency(cap, checks),
        "p50/p99 response times at each load the search ran.",
    ) + plot(
        "capacity-goodput",
        run_plots.capacity_goodput(cap),
        "Completed requests/s and goodput at each load.",
    ) + "</div>"  # fmt: skip
    return (
        f'<h2 id="capacity">Capacity (by {esc(cap.by)})</h2><div class="cards">{card_html}</div>'
        + plots
        + table(headers, rows)
        + '<p class="muted">margin: worst measured/limit over the SLO bounds (≤ 1 passes). '
        f"The sections below show step {cap.result_step}.</p>" + _notes(cap.notes, "capacity-notes")
    )


def _notes(notes: list[str], element_id: str) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div id="{element_id}" class="fail"><b>Note:</b><ul>{items}</ul></div>'


def _charts_section(results: Results) -> str:
    cdfs = "".join(
        plot(f"cdf-{m}", run_plots.latency_cdf(results, m), f"{title} of the measured requests.")
        for m, (title, _) in run_plots.CDF_METRICS.items()
    )
    out = f'<h2>Latency distributions</h2><div class="grid">{cdfs}</div>'
    bins = time_bins(results.requests)
    if bins is not None:
        out += (
            "<h2>Over time</h2>"
            + plot(
                "over-time",
                run_plots.over_time(results, bins),
                f"Per {bins.width_s:g} s interval, by send time.",
            )
            + plot(
                "tokens-over-time",
                run_plots.tokens_over_time(results, bins),
                "Streamed output tokens arriving at the client.",
            )
        )
    return out


def _server_section(results: Results) -> str:
    metrics = results.server_metrics
    if metrics is None or not metrics.available or not metrics.series:
        return ""
    panels = run_plots.server_panels(metrics.series)
    if not panels:
        return ""
    figures = "".join(
        plot(f"server-{i}", svg, f"{title}: from {', '.join(names)}.")
        for i, (title, names, svg) in enumerate(panels)
    )
    return (
        f'<h2 id="server-metrics">Server metrics</h2><p class="muted">Scraped from '
        f"{esc(metrics.url)} every {metrics.interval_s:g} s ({metrics.scrapes} scrapes, "
        f"{metrics.failed_scrapes} failed; {esc(metrics.flavor or '')} metric names).</p>"
        f'<div class="grid">{figures}</div>'
    )


def _classes_section(results: Results) -> str:
    classes = results.summary.classes
    if not classes:
        return ""
    out = ["<h2>By request class</h2>"]
    headers = ["value", "completed", "failed", "TTFT p50", "TTFT p99", "TTFT resp p99",
               "TPOT p50", "E2E p50", "E2E p99", "SLO attainment"]  # fmt: skip
    for key, values in classes.items():
        rows = [
            [
                esc(value),
                num(cs.requests_completed),
                num(cs.requests_failed),
                num(cs.ttft_ms.p50),
                num(cs.ttft_ms.p99),
                num(cs.ttft_response_ms.p99),
                num(cs.tpot_ms.p50),
                num(cs.e2e_ms.p50),
                num(cs.e2e_ms.p99),
                pct(cs.slo_attainment),
            ]
            for value, cs in values.items()
        ]
        out.append(f"<h3>{esc(key)}</h3>" + table(headers, rows, "classes"))
    return "".join(out)


def _errors_section(results: Results) -> str:
    s = results.summary
    kinds, excluded = s.errors_by_kind, s.excluded_errors_by_kind
    if not kinds and not excluded:
        return '<h2>Errors</h2><p id="errors-none">No request failed.</p>'
    examples = error_examples(results)
    rows = [
        [esc(k), num(n), num(excluded.get(k, 0)), "<br>".join(esc(m) for m in examples.get(k, []))]
        for k, n in sorted(
            {**dict.fromkeys(excluded, 0), **kinds}.items(), key=lambda kv: (-kv[1], kv[0])
        )
    ]
    headers = ["kind", "measured", "excluded (warm-up, cool-down)", "first messages"]
    return "<h2>Errors</h2>" + table(headers, rows, "errors")


def _config_section(results: Results) -> str:
    t, c = results.target, results.config
    load = {k: v for k, v in c.load.model_dump().items() if v is not None}
    target_rows = [
        ["URL", esc(t.url)],
        ["default model", esc(t.default_model)],
        ["models served", esc(", ".join(t.models_served or []) or "(no /v1/models)")],
        ["model map", esc(", ".join(f"{a}→{b}" for a, b in t.model_map.items()) or "none")],
        ["started locally", esc(t.started_locally)],
    ]
    if t.server_command:
        target_rows.append(["server command", f"<code>{esc(' '.join(t.server_command))}</code>"])
    metrics = results.server_metrics
    if metrics is not None and not metrics.available:
        target_rows.append(["server metrics", esc(metrics.note or "not available")])
    config_rows = [["mode", esc(c.mode)], ["api", esc(c.api)]]
    config_rows += [[esc(k), esc(v)] for k, v in load.items()]
    config_rows += [
        ["tokenizer", esc(c.tokenizer or "none (approximate token counts)")],
        ["exact token counts", esc(c.exact_token_counts)],
        ["deploylab", esc(c.deploylab_version)],
    ]
    if c.trace:
        config_rows.append(["trace", esc(c.trace)])
    definition = json.dumps(results.scenario.definition, indent=2)
    return (
        '<h2 id="configuration">Configuration and target</h2><div class="grid"><div>'
        + table(["target", ""], target_rows, "kv")
        + "</div><div>"
        + table(["load", ""], config_rows, "kv")
        + "</div></div>"
        + f"<details open><summary>Scenario {esc(results.scenario.name)} as run "
        f"({esc(results.scenario.source)})</summary><pre>{esc(definition)}</pre></details>"
    )


def render_run(results: Results) -> str:
    """The whole report page of one run."""
    sc, s = results.scenario, results.summary
    started = results.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    took = (results.finished_at - results.started_at).total_seconds()
    head = (
        f"<h1>Load test: {esc(sc.name)}</h1>"
        f'<p class="muted">{esc(sc.bottleneck)}</p>'
        f"<p>Target <code>{esc(results.target.url)}</code> · {esc(results.config.mode)} loop · "
        f"started {esc(started)} · {took:.1f} s · {s.requests_completed} completed, "
        f"{s.requests_failed} failed</p>"
    )
    if results.interrupted:
        head += '<p class="fail"><b>Interrupted:</b> partial results.</p>'
    # the verdict, then the server's side (the "why"), then the client's detail
    body = [head, _slo_section(results), _server_section(results)]
    if results.capacity is not None:
        body.append(_capacity_section(results.capacity, s.slo))
    body += [
        _summary_section(results),
        _charts_section(results),
        _classes_section(results),
        _errors_section(results),
        _config_section(results),
        f'<p class="muted">deploylab {esc(results.config.deploylab_version)} · results schema '
        f"{results.schema_version}</p>",
    ]
    return page(f"deploylab report: {sc.name}", "\n".join(b for b in body if b))

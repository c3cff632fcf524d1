"""The terminal summary of a load-test run: latency table, throughput, errors with their first
messages, the scenario's point (its per-class figures), the SLO verdict with why each bound
failed and what to try, and warnings about the run itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_STATS = ("mean", "p50", "p90", "p95", "p99", "max")
_CLASS_ROWS = 12  # class values shown per class; the report has them all
_CLASS_TITLES = {  # what each class shows about its scenario
    "turn": "per turn: later turns resend the history (KV retention)",
    "model_first_request": "cold (first request to a model) vs warm",
    "model_state": "by the model's state on arrival (sleeping/unloaded: a cold start)",
    "model": "per model",
    "adapter": "per adapter",
    "doc_size": "by largest document size",
}


_FIRST_CLASSES = ("model_first_request", "model_state")  # shown before the others


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _latency_table(results: Any) -> Table:
    s = results.summary
    title = f"{results.scenario.name}: {s.requests_completed} completed, {s.requests_failed} failed"
    if s.requests_short:
        title += f" ({s.requests_short} of the completed stopped short)"
    if s.requests_excluded:
        title += f"; {s.requests_excluded} excluded (warm-up/cool-down)"
        if s.excluded_failed:
            title += f", {s.excluded_failed} of them failed"
    if results.interrupted:
        title += " (interrupted: partial results)"
    table = Table(title=title)
    for column in ("metric (ms)", *_STATS):
        table.add_column(column, justify="right")
    rows = (
        ("TTFT (service)", s.ttft_ms),
        ("TTFT (response)", s.ttft_response_ms),
        ("ITL", s.itl_ms),
        ("TPOT", s.tpot_ms),
        ("E2E (service)", s.e2e_ms),
        ("E2E (response)", s.e2e_response_ms),
        ("schedule lateness", s.schedule_lateness_ms),
    )
    for name, st in rows:
        table.add_row(name, *(_fmt(getattr(st, k)) for k in _STATS))
    return table


def _class_tables(results: Any) -> list[Table]:
    """The scenario's point: its per-class figures (turn, cold/warm, adapter, document size)."""
    tables = []
    keys = sorted(results.summary.classes, key=lambda k: k not in _FIRST_CLASSES)
    for key in keys:
        values = results.summary.classes[key]
        if not values:
            continue
        table = Table(title=f"{key}: {_CLASS_TITLES.get(key, 'per value')}")
        for column in ("value", "done", "failed", "TTFT p50", "TTFT p99", "E2E p50", "SLO met"):
            table.add_column(column, justify="right")
        for value, cs in list(values.items())[:_CLASS_ROWS]:
            met = "-" if cs.slo_attainment is None else f"{100 * cs.slo_attainment:.0f} %"
            table.add_row(
                value,
                str(cs.requests_completed),
                str(cs.requests_failed),
                _fmt(cs.ttft_ms.p50),
                _fmt(cs.ttft_ms.p99),
                _fmt(cs.e2e_ms.p50),
                met,
            )
        if len(values) > _CLASS_ROWS:
            table.caption = f"{len(values) - _CLASS_ROWS} more in the report"
        tables.append(table)
    return tables


def print_summary(results: Any, path: Path) -> None:
    """Print the run's summary, the SLO verdict with its reasons, and where the results are."""
    from deploylab.loadtest.explain import explain_failures, next_steps
    from deploylab.loadtest.findings import error_examples, rate_gap, run_findings, token_source

    console = Console()
    s = results.summary
    console.print(_latency_table(results))
    console.print(
        f"throughput: {_fmt(s.output_tokens_per_s)} output tok/s, {_fmt(s.requests_per_s, 2)} "
        f"req/s, goodput {_fmt(s.goodput_rps, 2)} req/s; error rate "
        f"{_fmt(None if s.error_rate is None else 100 * s.error_rate, 2)} %"
        + (
            f" (whole run: {_fmt(s.output_tokens_per_s_run)} tok/s over {_fmt(s.run_s, 0)} s)"
            if rate_gap(s)
            else ""
        ),
        highlight=False,
    )
    source = token_source(s)
    if source:
        console.print(source, highlight=False)
    if s.errors_by_kind:
        console.print("errors: " + ", ".join(f"{k} {n}" for k, n in s.errors_by_kind.items()))
        for kind, messages in error_examples(results).items():
            for message in messages:
                console.print(f"  {kind}: {message}", highlight=False, markup=False)
    for table in _class_tables(results):
        console.print(table)
    profile = results.config.slo_profile
    for check in s.slo:
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[check.passed]
        label = (
            check.metric if check.percentile is None else f"{check.metric} p{check.percentile:g}"
        )
        console.print(f"SLO {label} <= {check.limit:g}: measured {_fmt(check.measured, 3)} {mark}")
    verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]unknown[/]"}
    which = f" (SLO profile {profile})" if profile else ""
    console.print(f"SLO verdict{which}: {verdict[s.slo_passed]}")
    for reason in explain_failures(results):
        console.print(f"  why: {reason}", highlight=False, markup=False)
    step = next_steps(results)
    if step:
        console.print(f"  {step}", highlight=False, markup=False)
    for warning in run_findings(results):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"results: {path}", highlight=False)

"""`deploylab report`: render a run's HTML report again, compare runs, gate on regressions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from deploylab.errors import UsageError

app = typer.Typer(no_args_is_help=True)

_FAIL_IF_HELP = (
    'Regression gate rule, repeatable: METRIC OP BOUND, e.g. "ttft_ms.p99 > +10%" (grew by '
    'more than 10 % over the first run), "goodput_rps < -5%", "error_rate > 0.01". Exit 1 '
    "when any run breaks a rule."
)


def _results_path(path: Path) -> Path:
    from deploylab.loadtest.results import RESULTS_FILE

    return path / RESULTS_FILE if path.is_dir() else path


def write_run_report(results: Any, out_dir: Path, console: Console | None = None) -> Path:
    """Write `out_dir/report.html` for a finished run and say where it is (and, once, why
    there are no server metrics when the target offered none)."""
    from deploylab.loadtest.report import write_report

    console = console or Console()
    path = write_report(results, out_dir)
    metrics = results.server_metrics
    if metrics is not None and metrics.note:
        console.print(f"server metrics: {metrics.note}", highlight=False, style="yellow")
    console.print(f"report: {path}", highlight=False)
    return path


@app.command("render")
def render(
    results: Path = typer.Argument(..., help="A results.json (or the folder holding one)."),
    out: Path | None = typer.Option(
        None, "--out", help="HTML file to write (default: report.html beside results.json)."
    ),
) -> None:
    """Rebuild the HTML report of a run from its saved results.json."""
    from deploylab.loadtest.report import REPORT_FILE, write_report
    from deploylab.loadtest.results import load_results

    source = _results_path(results)
    loaded = load_results(source)
    path = write_report(loaded, out or source.parent / REPORT_FILE)
    Console().print(f"report: {path}", highlight=False)


def _labels(paths: list[Path], given: list[str]) -> list[str]:
    if given:
        if len(given) != len(paths):
            raise UsageError(
                f"Give one --label per run: {len(paths)} runs but {len(given)} labels."
            )
        return given
    names = [p.resolve().parent.name or str(p) for p in paths]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


@app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Two or more results.json files (or folders); the first is the baseline."
    ),
    out: Path = typer.Option(Path("compare.html"), "--out", help="HTML file to write."),
    fail_if: list[str] = typer.Option([], "--fail-if", help=_FAIL_IF_HELP),
    label: list[str] = typer.Option(
        [], "--label", help="Names for the runs, in order (default: their folder names)."
    ),
) -> None:
    """Compare runs side by side (deltas against the first, overlaid CDFs) in compare.html;
    with --fail-if, exit 1 when a run regresses past a bound."""
    from deploylab.loadtest.compare import (
        comparability_warnings,
        deltas,
        parse_rule,
        run_gate,
    )
    from deploylab.loadtest.report import write_compare
    from deploylab.loadtest.results import load_results

    rules = [parse_rule(text) for text in fail_if]  # bad rules fail before any file is read
    if len(runs) < 2:
        raise UsageError("Give at least two results files to compare (the first is the baseline).")
    paths = [_results_path(p) for p in runs]
    loaded = [load_results(p) for p in paths]
    labels = _labels(paths, label)
    checks = run_gate(rules, loaded, labels)
    path = write_compare(loaded, labels, [str(p) for p in paths], out, checks)

    console = Console()
    table = Table(title=f"Compared with {labels[0]}")
    table.add_column("metric")
    for name in labels:
        table.add_column(name, justify="right")
    key = ["ttft_ms.p99", "itl_ms.p99", "e2e_ms.p99", "output_tokens_per_s", "goodput_rps"]
    for d in deltas(loaded, key):
        cells = ["-" if d.values[0] is None else f"{d.values[0]:.4g}"]
        for v, ch in zip(d.values[1:], d.changes[1:], strict=True):
            change = "" if ch is None else f" ({100 * ch:+.1f}%)"
            cells.append("-" if v is None else f"{v:.4g}{change}")
        table.add_row(d.metric, *cells)
    console.print(table)
    for warning in comparability_warnings(loaded, labels):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"compare: {path}", highlight=False)
    failed = [c for c in checks if c.failed]
    for c in checks:
        mark = "[red]FAIL[/]" if c.failed else "[green]ok[/]"
        console.print(f"gate {c.rule.text!r} on {c.run}: {c.detail} {mark}", highlight=False)
    if failed:
        Console(stderr=True).print(
            f"[bold red]regression:[/] {len(failed)} of {len(checks)} gate checks failed.",
            highlight=False,
        )
        raise typer.Exit(1)

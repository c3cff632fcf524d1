"""`deploylab dataloader`: find what slows a training input pipeline, by ablation."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from deploylab.errors import UsageError, UserCodeError

if TYPE_CHECKING:
    from deploylab.dataloader.report import DiagnoseReport, Measurement, SweepReport
    from deploylab.dataloader.script import Pipeline

app = typer.Typer(no_args_is_help=True)

_SCRIPT_HELP = (
    "A Python file defining deploylab_pipeline() -> Pipeline(dataset, loader_kwargs, step); "
    "see docs/dataloader.md."
)


def _load(script: Path, num_workers: int | None, batch_size: int | None) -> Pipeline:
    from deploylab.dataloader.script import load_pipeline

    pipeline = load_pipeline(script)
    if num_workers is not None:
        if num_workers < 0:
            raise UsageError(f"--num-workers must be 0 or more (got {num_workers}).")
        pipeline.loader_kwargs["num_workers"] = num_workers
        if num_workers == 0:  # DataLoader refuses these without workers
            pipeline.loader_kwargs.pop("prefetch_factor", None)
            pipeline.loader_kwargs.pop("persistent_workers", None)
    if batch_size is not None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be 1 or more (got {batch_size}).")
        pipeline.loader_kwargs["batch_size"] = batch_size
    return pipeline


def _report_user_error(exc: UserCodeError) -> None:
    err = Console(stderr=True, highlight=False)
    err.print("[bold]Traceback of the error in your code:[/]")
    err.print(exc.user_traceback, markup=False, end="", soft_wrap=True)  # paths stay whole


@contextmanager
def _ctrl_c_stops_cleanly() -> Iterator[None]:
    """Turn Ctrl-C during a run into one KeyboardInterrupt, whatever it broke on the way.

    Workers get the same SIGINT and may die first, and stopping them can raise torch's
    "worker killed by signal": once the user pressed Ctrl-C, any error is the interrupt.
    """
    interrupted = [False]

    def handler(signum: int, frame: Any) -> None:
        interrupted[0] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    except KeyboardInterrupt:
        _report_interrupt()
        raise
    except Exception as exc:
        if interrupted[0]:
            _report_interrupt()
            raise KeyboardInterrupt from exc
        if isinstance(exc, UserCodeError):
            _report_user_error(exc)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _report_interrupt() -> None:
    Console(stderr=True).print("Interrupted: the DataLoader workers were stopped.")


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n < 1e6:
        return f"{n / 1e3:.0f} kB"
    return f"{n / 1e6:.1f} MB"


def _row(m: Measurement) -> list[str]:
    return [
        f"{m.samples_per_s:.1f}",
        f"{m.step_time_ms:.1f}",
        f"{100 * m.data_wait_share:.0f}%",
        f"{m.main_cpu_percent:.0f}%",
        f"{m.workers_cpu_percent:.0f}% ({m.workers_seen})",
        f"{m.cpu_ms_per_sample:.2f}",
        _size(m.disk_read_bytes),
        _size(m.read_call_bytes),
    ]


def _measure_columns(table: Table) -> None:
    table.add_column("samples/s", justify="right")
    table.add_column("step ms", justify="right")
    table.add_column("waiting for data", justify="right", no_wrap=True)
    table.add_column("main CPU", justify="right")
    table.add_column("workers CPU (n)", justify="right", no_wrap=True)
    table.add_column("CPU ms/sample", justify="right", no_wrap=True)
    table.add_column("disk read", justify="right")
    table.add_column("read calls", justify="right")


def _print_diagnosis(report: DiagnoseReport, console: Console) -> None:
    loader = report.loader
    size = "stream" if report.dataset_length is None else f"{report.dataset_length} samples"
    console.print(
        f"[bold]{report.dataset_type}[/] ({size}, stages found: "
        f"{report.adapter}), batch_size={loader.batch_size}, num_workers={loader.num_workers}, "
        f"step: {report.step or 'none (loader timed alone)'}, "
        f"{report.environment.cpu_count} CPU cores"
    )
    table = Table(
        title=f"Variants: fastest of {report.rounds} round(s) each (CPU: 100% = one core)"
    )
    table.add_column("variant", no_wrap=True)
    _measure_columns(table)
    for result in report.variants:
        m = result.measurement
        if m is not None:
            cells = _row(m)
            if m.rate_ci is not None:
                cells[0] += f" +-{100 * m.rate_ci:.0f}%"
            table.add_row(result.name.value, *cells)
        else:
            table.add_row(result.name.value, "not built", *[""] * 7)
    console.print(table)
    for result in report.variants:
        if result.skipped_reason:
            console.print(f"  {result.name.value} not built: {result.skipped_reason}")
            if result.enable:
                console.print(f"    to enable it: {result.enable}")
        if result.note:
            console.print(f"  {result.name.value}: {result.note}")
    if not report.environment.io_counters:
        console.print(f"  {report.environment.io_note}")
    verdict = report.verdict
    console.print(f"\n[bold]Verdict:[/] {verdict.headline}")
    if verdict.evidence:
        console.print("[bold]Evidence:[/]")
        for line in verdict.evidence:
            console.print(f"  - {line}")
    if verdict.suggestions:
        console.print("[bold]Suggestions:[/]")
        for line in verdict.suggestions:
            console.print(f"  - {line}")
    if report.elapsed_s is not None:
        console.print(f"Verdict in {report.elapsed_s:.1f} s.")


def _write_json(model: Any, path: Path | None, console: Console) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model.model_dump_json(indent=2) + "\n")
    console.print(f"JSON: {path}")


@app.command("diagnose")
def diagnose_command(
    script: Path = typer.Argument(..., help=_SCRIPT_HELP),
    steps: int = typer.Option(10, "--steps", help="Fewest measured steps per variant and round."),
    min_seconds: float = typer.Option(
        0.2, "--min-seconds", help="Measure each variant and round for at least this long."
    ),
    precision: float = typer.Option(
        0.05,
        "--precision",
        help="Stop a variant once its time per sample is known within this share of the "
        "baseline's (95% confidence interval).",
    ),
    max_seconds: float = typer.Option(
        3.0, "--max-seconds", help="Stop a variant after this long even if less precise."
    ),
    confidence: float = typer.Option(
        0.95, "--confidence", help="Run more rounds while the verdict is less sure than this."
    ),
    rounds: int = typer.Option(
        1, "--rounds", help="Rounds per variant, in alternating order; the fastest is kept."
    ),
    max_rounds: int | None = typer.Option(
        None,
        "--max-rounds",
        help="Rounds at most, while the verdict is unsure (default rounds+1).",
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", help="Warm-up steps per variant (default: workers x prefetch + 1)."
    ),
    num_workers: int | None = typer.Option(
        None, "--num-workers", help="Override the script's num_workers."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Override the script's batch_size."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    chart: Path = typer.Option(
        Path("dataloader-variants.png"), "--chart", help="Where to write the bar chart PNG."
    ),
    no_chart: bool = typer.Option(False, "--no-chart", help="Do not write the chart."),
) -> None:
    """Time the pipeline in four variants and say what slows it, with evidence."""
    from deploylab.dataloader.diagnose import diagnose

    console = Console(width=max(140, Console().width), highlight=False)
    with _ctrl_c_stops_cleanly():
        pipeline = _load(script, num_workers, batch_size)
        report = diagnose(
            pipeline.dataset,
            pipeline.loader_kwargs,
            pipeline.step,
            steps=steps,
            min_seconds=min_seconds,
            rounds=rounds,
            max_rounds=max_rounds,
            warmup=warmup,
            chart_path=None if no_chart else chart,
            precision=precision,
            max_seconds=max_seconds,
            confidence=confidence,
        )
    _print_diagnosis(report, console)
    if report.chart.png:
        console.print(f"\nChart: {report.chart.png}")
    _write_json(report, json_out, console)


def _parse_counts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"--workers takes comma-separated whole numbers, e.g. 0,1,2,4 (got {text!r})."
        ) from None
    if not counts or min(counts) < 0:
        raise UsageError(f"--workers needs one or more counts, each 0 or more (got {text!r}).")
    return counts


def _print_sweep(report: SweepReport, console: Console) -> None:
    table = Table(
        title=f"{report.dataset_type}: samples/s vs num_workers, fastest of {report.rounds} "
        "round(s) (CPU: 100% = one core)"
    )
    table.add_column("num_workers", justify="right", no_wrap=True)
    _measure_columns(table)
    for point in report.points:
        mark = " <- knee" if point.num_workers == report.knee_num_workers else ""
        table.add_row(f"{point.num_workers}{mark}", *_row(point.measurement))
    console.print(table)
    console.print(report.summary)


@app.command("sweep-workers")
def sweep_command(
    script: Path = typer.Argument(..., help=_SCRIPT_HELP),
    workers: str | None = typer.Option(
        None, "--workers", help="Comma-separated num_workers values (default 0,1,2,4.. 2x cores)."
    ),
    steps: int = typer.Option(30, "--steps", help="Fewest measured steps per point and round."),
    min_seconds: float = typer.Option(
        1.0, "--min-seconds", help="Measure each point and round for at least this long."
    ),
    rounds: int = typer.Option(
        2, "--rounds", help="Rounds per point, in alternating order; the fastest is kept."
    ),
    max_rounds: int | None = typer.Option(
        None,
        "--max-rounds",
        help="Extra rounds, up to this many, while the best is unconfirmed (default rounds+2).",
    ),
    warmup: int | None = typer.Option(None, "--warmup", help="Warm-up steps per point."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Override the script's batch_size."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    chart: Path = typer.Option(
        Path("dataloader-workers.png"), "--chart", help="Where to write the line chart PNG."
    ),
    no_chart: bool = typer.Option(False, "--no-chart", help="Do not write the chart."),
) -> None:
    """Measure samples/s of the pipeline as is for several num_workers and mark the knee."""
    from deploylab.dataloader.sweep import sweep_workers

    counts = _parse_counts(workers)
    console = Console(width=max(140, Console().width), highlight=False)
    with _ctrl_c_stops_cleanly():
        pipeline = _load(script, None, batch_size)
        report = sweep_workers(
            pipeline.dataset,
            pipeline.loader_kwargs,
            pipeline.step,
            workers=counts,
            steps=steps,
            min_seconds=min_seconds,
            rounds=rounds,
            max_rounds=max_rounds,
            warmup=warmup,
            chart_path=None if no_chart else chart,
        )
    _print_sweep(report, console)
    if report.chart.png:
        console.print(f"Chart: {report.chart.png}")
    _write_json(report, json_out, console)

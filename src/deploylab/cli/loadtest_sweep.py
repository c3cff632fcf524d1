"""`deploylab loadtest sweep`: the capacity search (registered in `cli/loadtest.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from deploylab.errors import UsageError


def sweep(
    scenario: str | None = typer.Option(
        None, "--scenario", "-s", help="A built-in scenario name or a scenario YAML file."
    ),
    by: str = typer.Option("rate", "--by", help="Search over rate (req/s) or concurrency."),
    url: str | None = typer.Option(
        None, help="Target base URL. Default: start `deploylab serve` on the default model."
    ),
    model: str | None = typer.Option(None, help="Served model for requests naming no model."),
    tokenizer: str | None = typer.Option(None, help="Target's tokenizer for exact prompts."),
    duration: float | None = typer.Option(None, help="Seconds per step (default: scenario's)."),
    requests: int | None = typer.Option(None, help="Or: requests per step."),
    arrival: str | None = typer.Option(None, help="Open-loop arrivals: poisson|constant|gamma."),
    warmup: float | None = typer.Option(None, help="Seconds excluded at the start of each step."),
    cooldown: float | None = typer.Option(None, help="Seconds excluded at the end of each step."),
    workers: int = typer.Option(1, help="Worker processes sharing the load."),
    seed: int = typer.Option(0, help="Random seed."),
    out: Path | None = typer.Option(None, help="Folder for results.json and report.html."),
    model_map: list[str] = typer.Option([], "--model-map", help="FROM=TO model name mapping."),
    api: str | None = typer.Option(None, help="chat or completions (default: the scenario's)."),
    timeout: float = typer.Option(600.0, help="Per-request timeout in seconds."),
    max_steps: int = typer.Option(12, help="Loads to run at most, the probe included."),
    tolerance: float = typer.Option(0.05, help="Stop when the bracket is this narrow (relative)."),
    start: float | None = typer.Option(
        None, help="First load to try (default: the probe's throughput, or the scenario's or 4)."
    ),
    probe_concurrency: int = typer.Option(
        64, help="Concurrency of the saturation probe (by rate)."
    ),
    max_load: float | None = typer.Option(None, help="Never offer more than this load."),
    scrape_interval: float = typer.Option(
        1.0, "--scrape-interval", help="Seconds between scrapes of the target's /metrics; 0: off."
    ),
    progress: bool = typer.Option(True, help="Show live progress of each step."),
    slo_profile: str | None = typer.Option(
        None, "--slo-profile", help="The scenario's SLOs for a deployment class: gpu or cpu."
    ),
    serve_timeout: float = typer.Option(300.0, help="Seconds to wait for the local server."),
    check_timeout: float = typer.Option(
        10.0, "--check-timeout", help="Seconds GET /v1/models may take before the run; 0: skip."
    ),
) -> None:
    """Find the highest rate (or concurrency) at which the scenario's SLOs hold.

    Runs a saturation probe, then an interpolating search with at most --max-steps loads.
    Writes OUT/results.json (the run at capacity, plus `capacity` with every step) and
    OUT/report.html with the latency-vs-load curve.
    """
    from deploylab.loadtest.library import builtin_names, load_scenario
    from deploylab.loadtest.sweep import SweepOptions

    if scenario is None:
        raise UsageError(
            f"Choose a scenario with --scenario NAME|FILE ({', '.join(builtin_names())})."
        )
    if out is None:
        raise UsageError("Give --out DIR: the folder where results.json and report.html go.")
    if scrape_interval < 0:
        raise UsageError(f"--scrape-interval {scrape_interval:g} must be 0 (off) or positive.")
    if check_timeout < 0:
        raise UsageError(
            f"--check-timeout {check_timeout:g} must be 0 (skip the check) or positive."
        )
    if arrival is not None and arrival not in ("poisson", "constant", "gamma"):
        raise UsageError(f"--arrival '{arrival}' is not one of poisson, constant, gamma.")
    options = SweepOptions(
        by=by,  # type: ignore[arg-type]  # checked by options.check()
        max_steps=max_steps,
        tolerance=tolerance,
        start=start,
        probe_concurrency=probe_concurrency,
        max_load=max_load,
    )
    options.check()
    loaded = load_scenario(scenario).with_slo_profile(slo_profile)
    slo = loaded.scenario.slo
    if not slo.bounds() and slo.error_rate is None:
        raise UsageError(
            f"Scenario '{loaded.scenario.name}' sets no SLO, so no load can pass or miss: add an "
            "`slo:` section (e.g. ttft_ms: {p99: 500}) to a copy of it."
        )
    overrides = {
        "arrival": arrival,
        "duration_s": duration,
        "requests": requests,
        "warmup_s": warmup,
        "cooldown_s": cooldown,
        "workers": workers,
        "seed": seed,
        "timeout_s": timeout,
    }
    prepare = {
        "model": model,
        "model_map": model_map,
        "tokenizer": tokenizer,
        "api": api,
        "check_timeout_s": check_timeout,
    }
    _sweep(loaded, url, out, overrides, prepare, options, progress, serve_timeout, scrape_interval)


def _sweep(
    loaded: Any,
    url: str | None,
    out: Path,
    overrides: dict[str, Any],
    prepare: dict[str, Any],
    options: Any,
    show_progress: bool,
    serve_timeout: float,
    scrape_interval: float,
) -> None:
    from deploylab.catalog import DEFAULT_MODEL
    from deploylab.cli.loadtest_summary import print_summary
    from deploylab.cli.report import write_run_report
    from deploylab.loadtest.capacity import CapacityStep
    from deploylab.loadtest.config import LoadConfig, resolve_load
    from deploylab.loadtest.local_server import LocalServer
    from deploylab.loadtest.progress import LiveProgress
    from deploylab.loadtest.runner import execute, prepare_run
    from deploylab.loadtest.sweep import search_capacity

    console = Console(stderr=True)
    base = resolve_load(loaded.scenario.load, **overrides)
    server = None
    try:
        if url is None:
            server = LocalServer(out / "server.log", startup_timeout_s=serve_timeout)
            console.print(f"Starting `deploylab serve` on {server.base_url}")
            url = server.start()
            prepare["tokenizer"] = prepare["tokenizer"] or DEFAULT_MODEL
            prepare["started_locally"] = True
            prepare["server_command"] = server.command
        prepared = prepare_run(loaded, url, **prepare)
        console.print(
            f"Capacity search for [bold]{loaded.scenario.name}[/] by {options.by} against "
            f"{prepared.base_url} (at most {options.max_steps} loads)",
            highlight=False,
        )

        def run_step(load: LoadConfig) -> Any:
            interval = scrape_interval or None
            if not show_progress:
                return execute(prepared, load, scrape_interval_s=interval)
            with LiveProgress(console, load.duration_s, load.requests) as live:
                return execute(prepared, load, live.update, interval)

        def on_step(step: CapacityStep) -> None:
            kind = "concurrency" if step.mode == "closed" else "rate"
            verdict = {True: "[green]pass[/]", False: "[red]miss[/]", None: "[yellow]n/a[/]"}
            result = "probe" if step.phase == "probe" else verdict[step.passed]
            p99 = "-" if step.ttft_ms_p99 is None else f"{step.ttft_ms_p99:.1f}"
            rps = "-" if step.requests_per_s is None else f"{step.requests_per_s:.2f}"
            margin = "-" if step.margin is None else f"{step.margin:.2f}"
            console.print(
                f"step {step.index} ({step.phase}): {kind} {step.load:.4g} -> {rps} req/s, "
                f"TTFT p99 {p99} ms, margin {margin}: {result}",
                highlight=False,
            )

        capacity, results = search_capacity(run_step, base, options, on_step)
    finally:
        if server is not None:
            server.stop()
    results.capacity = capacity
    path = results.save(out)
    print_summary(results, path)
    value = "none" if capacity.capacity is None else f"{capacity.capacity:.4g} {capacity.unit}"
    Console().print(
        f"[bold]capacity ({loaded.scenario.name}, by {capacity.by}): {value}[/] "
        f"({capacity.limited_by}; {len(capacity.steps)} loads run)",
        highlight=False,
    )
    if capacity.capacity is not None and capacity.highest_passed is not None:
        if capacity.capacity < capacity.highest_passed:
            Console().print(
                f"(the highest passing offer was {capacity.highest_passed:.4g} {capacity.unit}; "
                "the capacity is what that load was measured to hold)",
                highlight=False,
            )
    for note in capacity.notes:
        Console().print(f"[yellow]note:[/] {note}", highlight=False)
    write_run_report(results, out)

"""`deploylab loadtest`: load-test an OpenAI-compatible endpoint with a business scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from deploylab.cli.loadtest_summary import print_summary
from deploylab.cli.loadtest_sweep import sweep as sweep_command
from deploylab.cli.report import write_run_report
from deploylab.errors import DeploylabError, UsageError

app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@app.callback()
def loadtest(
    ctx: typer.Context,
    scenario: str | None = typer.Option(
        None, "--scenario", "-s", help="A built-in scenario name or a scenario YAML file."
    ),
    url: str | None = typer.Option(
        None, help="Target base URL, e.g. http://127.0.0.1:8000. Default: start `deploylab serve`."
    ),
    model: str | None = typer.Option(None, help="Served model for requests naming no model."),
    tokenizer: str | None = typer.Option(
        None, help="Target's tokenizer (folder, .gguf or model name) for exact prompt lengths."
    ),
    duration: float | None = typer.Option(None, help="Run for this many seconds."),
    requests: int | None = typer.Option(None, help="Or: send this many requests."),
    concurrency: int | None = typer.Option(None, help="Closed loop: requests in flight."),
    rate: float | None = typer.Option(None, help="Open loop: requests (or sessions) per second."),
    arrival: str | None = typer.Option(None, help="Open-loop arrivals: poisson|constant|gamma."),
    gamma_shape: float | None = typer.Option(
        None, help="Shape of gamma arrivals (<1 burstier than Poisson)."
    ),
    ramp_up: float | None = typer.Option(None, help="Seconds to ramp the load up from zero."),
    warmup: float | None = typer.Option(None, help="Seconds excluded from the results at start."),
    cooldown: float | None = typer.Option(None, help="Seconds excluded at the end."),
    workers: int = typer.Option(1, help="Worker processes sharing the load."),
    ray_address: str | None = typer.Option(
        None,
        help="Run the workers as Ray actors on this cluster (ADDRESS, or 'local' for a Ray "
        "started here); needs `pip install 'deploylab[ray]'`.",
    ),
    seed: int = typer.Option(0, help="Random seed (prompts, lengths, arrivals)."),
    out: Path | None = typer.Option(None, help="Folder for results.json."),
    model_map: list[str] = typer.Option(
        [], "--model-map", help="FROM=TO: send scenario model FROM (a glob) to served model TO."
    ),
    trace: Path | None = typer.Option(None, help="Trace file for the replay scenario."),
    api: str | None = typer.Option(None, help="chat or completions (default: the scenario's)."),
    timeout: float = typer.Option(600.0, help="Per-request timeout in seconds."),
    progress: bool = typer.Option(True, help="Show live progress."),
    serve_timeout: float = typer.Option(
        300.0, help="Seconds to wait for the local `deploylab serve` to become healthy."
    ),
    check_timeout: float = typer.Option(
        10.0,
        "--check-timeout",
        help="Seconds the target may take to answer GET /v1/models before the run (a busy "
        "one-request-at-a-time server answers late); 0: skip the check.",
    ),
    scrape_interval: float = typer.Option(
        1.0, "--scrape-interval", help="Seconds between scrapes of the target's /metrics; 0: off."
    ),
    slo_profile: str | None = typer.Option(
        None,
        "--slo-profile",
        help="Judge by the scenario's SLOs for a deployment class: gpu (default) or cpu.",
    ),
) -> None:
    """Load-test an OpenAI-compatible endpoint with a business scenario.

    Writes OUT/results.json (see docs/loadtest.md). Without --url, starts `deploylab serve` on
    the default model, runs, and stops it. `deploylab loadtest scenarios` lists the scenarios.
    """
    if ctx.invoked_subcommand is not None:
        return
    if scrape_interval < 0:
        raise UsageError(f"--scrape-interval {scrape_interval:g} must be 0 (off) or positive.")
    if check_timeout < 0:
        raise UsageError(
            f"--check-timeout {check_timeout:g} must be 0 (skip the check) or positive."
        )
    from deploylab.loadtest.library import builtin_names

    if scenario is None:
        raise UsageError(
            "Choose a scenario with --scenario NAME|FILE; built-in: "
            f"{', '.join(builtin_names())} (see `deploylab loadtest scenarios`)."
        )
    if out is None:
        raise UsageError("Give --out DIR: the folder where results.json is written.")
    if arrival is not None and arrival not in ("poisson", "constant", "gamma"):
        raise UsageError(f"--arrival '{arrival}' is not one of poisson, constant, gamma.")
    if api is not None and api not in ("chat", "completions"):
        raise UsageError(f"--api '{api}' is not one of chat, completions.")
    if ray_address is not None:
        from deploylab.loadtest.ray_workers import require_ray

        require_ray()
    overrides = {
        "concurrency": concurrency,
        "rate": rate,
        "arrival": arrival,
        "gamma_shape": gamma_shape,
        "duration_s": duration,
        "requests": requests,
        "ramp_up_s": ramp_up,
        "warmup_s": warmup,
        "cooldown_s": cooldown,
        "workers": workers,
        "ray_address": ray_address,
        "seed": seed,
        "timeout_s": timeout,
    }
    _run(
        scenario,
        url,
        out,
        overrides,
        prepare={
            "model": model,
            "model_map": model_map,
            "tokenizer": tokenizer,
            "trace": trace,
            "api": api,
            "check_timeout_s": check_timeout,
        },
        show_progress=progress,
        serve_timeout=serve_timeout,
        scrape_interval=scrape_interval,
        slo_profile=slo_profile,
    )


def _run(
    scenario: str,
    url: str | None,
    out: Path,
    overrides: dict[str, Any],
    prepare: dict[str, Any],
    show_progress: bool,
    serve_timeout: float,
    scrape_interval: float = 1.0,
    slo_profile: str | None = None,
) -> None:
    from deploylab.catalog import DEFAULT_MODEL
    from deploylab.loadtest.config import resolve_load
    from deploylab.loadtest.library import load_scenario
    from deploylab.loadtest.local_models import local_serve_args
    from deploylab.loadtest.local_server import LocalServer
    from deploylab.loadtest.progress import LiveProgress
    from deploylab.loadtest.runner import execute, prepare_run

    console = Console(stderr=True)
    loaded = load_scenario(scenario).with_slo_profile(slo_profile)
    load = resolve_load(loaded.scenario.load, **overrides)
    server = None
    try:
        if url is None:
            server = LocalServer(
                out / "server.log",
                startup_timeout_s=serve_timeout,
                extra_args=local_serve_args(loaded.scenario, DEFAULT_MODEL),
            )
            console.print(
                f"Starting `deploylab serve` on {server.base_url} (log: {server.log_path})"
            )
            url = server.start()
            prepare["tokenizer"] = prepare["tokenizer"] or DEFAULT_MODEL
            prepare["started_locally"] = True
            prepare["server_command"] = server.command
        if prepare["tokenizer"]:
            console.print(f"Loading tokenizer {prepare['tokenizer']} ...")
        prepared = prepare_run(loaded, url, **prepare)
        console.print(
            f"Scenario [bold]{loaded.scenario.name}[/]: {loaded.scenario.bottleneck}",
            highlight=False,
        )
        console.print(f"Target {prepared.base_url}, load: {_describe_load(load)}", highlight=False)
        for note in prepared.notes:
            console.print(f"[yellow]warning:[/] {note}", highlight=False)
        if show_progress:
            with LiveProgress(console, load.duration_s, load.requests) as live:
                results = execute(prepared, load, live.update, scrape_interval or None)
        else:
            results = execute(prepared, load, scrape_interval_s=scrape_interval or None)
    finally:
        if server is not None:
            server.stop()
    path = results.save(out)
    print_summary(results, path)
    write_run_report(results, out)
    if results.interrupted:
        raise typer.Exit(130)
    if results.summary.requests_completed == 0 and results.summary.requests_failed == 0:
        raise DeploylabError(
            f"Nothing was measured ({results.summary.requests_excluded} requests, all in the "
            f"warm-up or cool-down); lower --warmup / --cooldown or run longer. Results: {path}."
        )
    if results.summary.requests_completed == 0 and results.summary.requests_failed > 0:
        kinds = ", ".join(f"{k}: {n}" for k, n in results.summary.errors_by_kind.items())
        raise DeploylabError(f"Every request failed ({kinds}); results are in {path}.")


def _describe_load(load: Any) -> str:
    if load.mode == "closed":
        shape = f"closed loop, concurrency {load.concurrency}"
    elif load.mode == "open":
        shape = f"open loop, {load.rate:g} req/s {load.arrival}"
    else:
        shape = "trace times"
    bound = f"{load.duration_s:g} s" if load.duration_s else f"{load.requests} requests"
    if load.duration_s is None and load.requests is None:
        bound = "the whole trace"
    return f"{shape}, {bound}, {load.workers} worker(s)"


@app.command("scenarios")
def list_scenarios() -> None:
    """List the built-in scenarios: what each exposes and its default load and SLOs."""
    from deploylab.loadtest.library import builtin_names, load_scenario

    table = Table(title="Built-in scenarios")
    for column in ("name", "kind", "exposes", "default load", "SLOs"):
        table.add_column(column)
    for name in builtin_names():
        sc = load_scenario(name).scenario
        load = sc.load
        shape = (
            f"concurrency {load.concurrency}"
            if load.concurrency
            else (f"{load.rate:g} req/s {load.arrival}" if load.rate else "trace times")
        )
        slos = ", ".join(f"{m} {b.label}<={b.max_ms:g}" for m, b in sc.slo.bounds().items())
        table.add_row(name, sc.workload.kind, sc.bottleneck, shape, slos)
    Console(width=200).print(table)


app.command("sweep")(sweep_command)

"""`deploylab sim`: run the simulated OpenAI-compatible LLM server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from deploylab.errors import UsageError


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (faster socket writes), else asyncio's default loop."""
    if os.environ.get("DEPLOYLAB_SIM_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_sim(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML file with the performance model (see docs/sim.md)."
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="Start from a preset: small-gpu or large-gpu (the file overrides it).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port (0 picks a free one)."),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the effective config as YAML and exit."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="Count prompts with this tokenizer (folder, .gguf or model name, e.g. "
        "smollm2-135m-instruct); default: the config's, else an approximation.",
    ),
) -> None:
    """Run a simulated OpenAI-compatible LLM server with a configurable performance model."""
    from deploylab.loadtest.sim import dump_config, load_config, serve_forever

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port; use 0-65535.")
    cfg = load_config(config, preset)
    if tokenizer is not None:
        cfg = cfg.model_copy(update={"tokenizer": tokenizer})
    if show_config:
        typer.echo(dump_config(cfg), nl=False)
        return
    console = Console(stderr=True)
    if cfg.tokenizer:
        console.print(f"Loading tokenizer {cfg.tokenizer} ...", highlight=False)

    def ready(bound: int) -> None:
        models = ", ".join(cfg.model_names()[:5]) + (" ..." if len(cfg.model_names()) > 5 else "")
        console.print(
            f"deploylab sim listening on [bold]http://{host}:{bound}[/] (models: {models}); "
            "Ctrl-C stops it.",
            highlight=False,
        )

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve_forever(cfg, host, port, ready))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}.") from exc

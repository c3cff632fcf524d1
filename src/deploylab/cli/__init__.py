"""The `deploylab` command: one Typer app with a sub-command group per part.

Each part's commands live in `cli/<part>.py` and import their heavy dependencies (torch,
transformers, uvicorn) inside the command body, so `deploylab --help` stays fast.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from deploylab import __version__
from deploylab.cli import armt as armt_cli
from deploylab.cli import dataloader as dataloader_cli
from deploylab.cli import loadtest as loadtest_cli
from deploylab.cli import models
from deploylab.cli import report as report_cli
from deploylab.cli import serve as serve_cli
from deploylab.cli import sim as sim_cli
from deploylab.errors import DeploylabError

app = typer.Typer(
    name="deploylab",
    help="Deploy ML models fast and measure them honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models", help="List the known models and where their files are.")
app.add_typer(
    armt_cli.app,
    name="armt",
    help="Long-context recurrent memory transformer: run and benchmark.",
)
app.add_typer(
    loadtest_cli.app,
    name="loadtest",
    help="Load-test an OpenAI-compatible endpoint with a business scenario.",
)
app.add_typer(report_cli.app, name="report", help="Render, compare and gate load-test reports.")
app.command("serve", help="Serve a model over an OpenAI-compatible HTTP API.")(serve_cli.serve)
app.add_typer(
    dataloader_cli.app,
    name="dataloader",
    help="Find what slows a training input pipeline, by ablation.",
)
app.command(
    "sim",
    help="Run a simulated OpenAI-compatible LLM server with a configurable performance model.",
)(sim_cli.run_sim)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"deploylab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Debug logging, and full tracebacks on errors."
    ),
) -> None:
    """Deploy ML models fast and measure them honestly."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print their message and exit 2 (usage) or 1 (run time)."""
    args = sys.argv[1:] if argv is None else argv
    err = Console(stderr=True)
    try:
        app(args=args, prog_name="deploylab")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except DeploylabError as exc:
        if "--debug" in args:
            err.print_exception()
        # escaped: a message may hold brackets (e.g. `pip install 'deploylab[ray]'`)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("Interrupted.")
        code = 130
    else:
        code = 0
    if argv is None:
        sys.exit(code)
    return code

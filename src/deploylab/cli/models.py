"""`deploylab models`: the model catalog on the command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from deploylab.catalog import KNOWN_MODELS, resolve_model

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """Show the known models, whether each is installed, and where."""
    table = Table(title="Known models")
    table.add_column("name")
    table.add_column("present")
    table.add_column("path / how to install")
    table.add_column("description")
    for model in KNOWN_MODELS:
        path = model.locate()
        present = "[green]yes[/]" if path else "[red]no[/]"
        where = str(path) if path else model.install_hint
        table.add_row(model.name, present, where, model.description)
    Console(width=200).print(table)
    typer.echo("Any local .gguf file or Hugging Face directory can also be named by its path.")


@app.command("path")
def model_path(name: str = typer.Argument(..., help="A known model name or a local path.")) -> None:
    """Print the file path of a model, or exit 1 saying how to install it."""
    typer.echo(str(resolve_model(name)))

"""`deploylab armt`: run an ARMT over a long text, benchmark it, show its diagonal schedule."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from deploylab.catalog import DEFAULT_MODEL
from deploylab.errors import UsageError

if TYPE_CHECKING:
    import torch

    from deploylab.armt.bench import BenchRow, BenchSettings
    from deploylab.armt.config import ARMTConfig

app = typer.Typer(no_args_is_help=True)

_SEGMENT = typer.Option(1024, "--segment", help="Tokens per segment.")
_MEM = typer.Option(128, "--memory-tokens", help="Memory tokens appended to every segment.")
_DMEM = typer.Option(64, "--d-mem", help="Memory projection width (d_key = 6 * d_mem).")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
_DTYPE = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp32.")
_BACKEND = typer.Option("bmm", "--grouped-backend", help="Grouped GEMM: bmm or grouped_mm.")


def _armt_config(segment: int, memory_tokens: int, d_mem: int, **kw: Any) -> ARMTConfig:
    from deploylab.armt.config import ARMTConfig

    return ARMTConfig(segment_size=segment, num_mem_tokens=memory_tokens, d_mem=d_mem, **kw)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def bench_table(rows: list[BenchRow], settings: BenchSettings) -> Table:
    """The benchmark as a rich table, with diagonal's speed-ups per context."""
    from deploylab.armt.bench import METHOD_LABELS, speedups

    cfg = settings.armt
    title = (
        f"ARMT benchmark: {settings.shape}, {str(settings.dtype).replace('torch.', '')}, "
        f"{_device_name(settings.device)}, segment {cfg.segment_size}, "
        f"{cfg.num_mem_tokens} memory tokens, d_mem {cfg.d_mem}"
    )
    table = Table(title=title)
    for name in ("context", "method", "time s", "tokens/s", "peak GiB", "above start GiB"):
        table.add_column(name, justify="left" if name == "method" else "right")
    table.add_column("steps", justify="right")
    table.add_column("diagonal speed-up", justify="right")
    ups = speedups(rows)
    for r in rows:
        up = ""
        if r.method == "diagonal":
            parts = [
                f"{ups[(r.context, k)]:.2f}x {k}"
                for k in ("vs full", "vs sequential")
                if (r.context, k) in ups
            ]
            up = ", ".join(parts)
        table.add_row(
            f"{r.context:,}",
            METHOD_LABELS[r.method],
            _fmt(r.seconds) if r.note == "" else r.note,
            _fmt(r.tokens_per_s, 0),
            _fmt(r.peak_gib, 2),
            _fmt(r.added_gib, 2),
            "" if r.steps is None else str(r.steps),
            up,
        )
    return table


def _bench_command(settings: BenchSettings, output: Path) -> str:
    """The command line that reproduces `settings` (every option spelled out)."""
    cfg = settings.armt
    contexts = ",".join(str(c) for c in settings.contexts)
    return (
        f"deploylab armt bench --model-shape {settings.shape} --context {contexts} "
        f"--segment {cfg.segment_size} --memory-tokens {cfg.num_mem_tokens} "
        f"--d-mem {cfg.d_mem} --device {settings.device} "
        f"--dtype {str(settings.dtype).replace('torch.', '')} "
        f"--methods {','.join(settings.methods)} --grouped-backend {settings.backend} "
        f"--repeats {settings.repeats} --warmup {settings.warmup} --output {output}"
    )


@app.command("bench")
def bench(
    model_shape: str = typer.Option(
        "llama-3.2-1b", "--model-shape", help="Random-weight shape (engine preset)."
    ),
    context: str = typer.Option(
        "8192,32768,131072", "--context", help="Context lengths, comma-separated (8k = 8192)."
    ),
    segment: int = _SEGMENT,
    memory_tokens: int = _MEM,
    d_mem: int = _DMEM,
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    methods: str = typer.Option(
        "full,sequential,diagonal", "--methods", help="Any of full, sequential, diagonal."
    ),
    grouped_backend: str = _BACKEND,
    repeats: int = typer.Option(3, "--repeats", help="Timed runs per cell (median shown)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs before timing each cell."),
    output: Path | None = typer.Option(None, "--output", help="Also write the rows as JSON."),
) -> None:
    """Time and peak memory of full-attention Llama, sequential ARMT and diagonal ARMT."""
    from deploylab.armt.bench import BenchSettings, run_bench
    from deploylab.armt.grouped import check_backend
    from deploylab.armt.options import check_shape, parse_contexts, resolve_device, resolve_dtype

    dev = resolve_device(device)
    settings = BenchSettings(
        shape=check_shape(model_shape),
        contexts=parse_contexts(context),
        armt=_armt_config(segment, memory_tokens, d_mem, w_mv_init="normal"),
        device=dev,
        dtype=resolve_dtype(dtype, dev),
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        backend=check_backend(grouped_backend),
        repeats=repeats,
        warmup=warmup,
    )
    console = Console(width=200)
    console.print(f"Measuring on {_device_name(dev)} ...")
    rows = run_bench(
        settings,
        on_row=lambda r: console.print(
            f"  {r.context:>8,} {r.method:<10} {_fmt(r.seconds) if not r.note else r.note}"
        ),
    )
    console.print(bench_table(rows, settings))
    if output is not None:
        import torch

        record = {
            "command": _bench_command(settings, output),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "device": _device_name(dev),
            "torch": torch.__version__,
            "shape": settings.shape,
            "dtype": str(settings.dtype),
            "segment": segment,
            "memory_tokens": memory_tokens,
            "d_mem": d_mem,
            "backend": settings.backend,
            "rows": [r.to_dict() for r in rows],
        }
        output.write_text(json.dumps(record, indent=2))
        console.print(f"Rows written to {output}")


@app.command("run")
def run(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Known model name or local path."),
    text: str | None = typer.Option(None, "--text", help="The input text."),
    file: Path | None = typer.Option(None, "--file", help="Read the input text from a file."),
    segment: int = _SEGMENT,
    memory_tokens: int = _MEM,
    d_mem: int = _DMEM,
    executor: str = typer.Option(
        "both", "--executor", help="diagonal, sequential, or both (and compare them)."
    ),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    grouped_backend: str = _BACKEND,
    seed: int = typer.Option(0, "--seed", help="Seed of the fresh memory parameters."),
) -> None:
    """Read a long text with an ARMT on a Llama checkpoint (fresh memory parameters) and show
    segments, steps, time, perplexity and the predicted next token."""
    from deploylab.armt.model import load_armt
    from deploylab.armt.options import resolve_device, resolve_dtype
    from deploylab.armt.runner import EXECUTORS, max_logit_diff, report
    from deploylab.catalog import resolve_model
    from deploylab.engine.tokenizer import load_tokenizer

    if (text is None) == (file is None):
        raise UsageError("Give the input as exactly one of --text or --file.")
    if file is not None:
        if not file.is_file():
            raise UsageError(f"--file {file} does not exist or is not a file.")
        text = file.read_text(errors="replace")
    assert text is not None
    if not text.strip():
        raise UsageError("The input text is empty.")
    chosen = EXECUTORS if executor == "both" else (executor,)
    if any(e not in EXECUTORS for e in chosen):
        raise UsageError(f"Unknown executor '{executor}'. Choose diagonal, sequential or both.")
    dev = resolve_device(device)
    path = resolve_model(model)
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise UsageError(f"{path} has no tokenizer files; `armt run` needs one to read text.")
    import torch

    ids = torch.tensor([tokenizer.encode(text)], dtype=torch.long)
    armt = load_armt(
        path,
        _armt_config(segment, memory_tokens, d_mem, seed=seed),
        resolve_dtype(dtype, dev),
        dev,
    )
    table = Table(title=f"ARMT on {path.name}: {ids.shape[1]:,} tokens")
    for name in ("executor", "segments", "steps", "time s", "perplexity", "next token"):
        table.add_column(name, justify="left" if name in ("executor", "next token") else "right")
    hidden = []
    for name in chosen:
        rep, out = report(armt, name, ids, grouped_backend)
        hidden.append(out.hidden)
        table.add_row(
            name,
            str(rep.num_segments),
            str(rep.num_steps),
            _fmt(rep.seconds),
            _fmt(rep.perplexity, 2),
            repr(tokenizer.decode([rep.next_token])),
        )
    console = Console(width=160)
    console.print(table)
    if len(hidden) == 2 and hidden[0] is not None and hidden[1] is not None:
        diff = max_logit_diff(armt, hidden[0], hidden[1])
        console.print(f"max |logit difference| diagonal vs sequential: {diff:.3g}")


@app.command("schedule")
def schedule(
    layers: int = typer.Option(4, "--layers", help="Decoder layers."),
    segments: int = typer.Option(6, "--segments", help="Segments."),
) -> None:
    """Print which (layer, segment) pairs diagonal batching runs together."""
    from deploylab.armt.schedule import render_schedule

    if layers > 64 or segments > 64:
        raise UsageError("--layers and --segments are capped at 64 for a readable grid.")
    typer.echo(render_schedule(layers, segments))

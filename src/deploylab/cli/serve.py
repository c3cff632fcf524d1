"""`deploylab serve`: the OpenAI-compatible server on the embedded engine."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import typer

from deploylab.catalog import DEFAULT_MODEL, resolve_model
from deploylab.errors import ConfigError, UsageError


def serve(
    model: str = typer.Option(DEFAULT_MODEL, help="A known model name or a local path."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16 or float16."),
    max_num_seqs: int = typer.Option(64, help="Most requests in one batch."),
    max_model_len: int | None = typer.Option(None, help="Context length (default: the model's)."),
    served_model_name: str | None = typer.Option(
        None, help="Model name in the API (default: --model)."
    ),
    max_waiting: int = typer.Option(
        256, help="Waiting-queue bound; past it requests get 429 with Retry-After at once."
    ),
    kv_cache_gib: float = typer.Option(1.0, help="KV-cache size on the CPU, GiB."),
    speculative_config: str | None = typer.Option(
        None,
        help='Speculative decoding as JSON (vLLM names), e.g. \'{"method": "ngram", '
        '"num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}\'.',
    ),
    kv_offload_gib: float = typer.Option(
        0.0,
        help="KV tiers: host memory (GiB, pinned on CUDA) that keeps prefix-cache blocks "
        "evicted from the device and copies them back on a hit (0: off). See docs/kv_tiers.md.",
    ),
    kv_offload_dir: str | None = typer.Option(
        None, help="KV tiers: a directory for a disk tier behind the host tier."
    ),
    kv_offload_disk_gib: float = typer.Option(16.0, help="KV tiers: the disk tier's cap, GiB."),
    kv_offload_policy: str = typer.Option(
        "auto",
        help="KV tiers: auto (copy back only when the cost model says it is cheaper "
        "than recomputing) or always.",
    ),
    shutdown_timeout: float = typer.Option(
        30.0,
        "--shutdown-timeout",
        "--drain-seconds",
        help="On SIGTERM, seconds in-flight requests may take to finish before they fail "
        "(0: fail them at once).",
    ),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API."""
    from deploylab.engine.async_engine import AsyncEngine
    from deploylab.engine.config import EngineConfig
    from deploylab.engine.spec_decode import parse_speculative_config
    from deploylab.server.launcher import serve as run_server

    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got '{device}'.")
    if not shutdown_timeout >= 0:
        raise UsageError(f"--shutdown-timeout must be >= 0 seconds, got {shutdown_timeout}.")
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}.")
    resolve_model(model)  # fail fast, before binding, on a model that is not here
    try:
        spec = parse_speculative_config(speculative_config)
    except ConfigError as exc:
        raise UsageError(f"--speculative-config: {exc}") from None
    config = EngineConfig(
        model=model,
        speculative_config=asdict(spec) if spec is not None else None,
        device=device,
        dtype=dtype,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(2048, max_num_seqs),
        max_model_len=max_model_len,
        max_waiting=max_waiting,
        kv_cache_gib=kv_cache_gib,
        kv_offload_gib=kv_offload_gib,
        kv_offload_dir=kv_offload_dir,
        kv_offload_disk_gib=kv_offload_disk_gib,
        kv_offload_policy=kv_offload_policy,
    )

    def load() -> Any:
        return AsyncEngine(config)

    typer.echo(f"deploylab serve: loading {model} ...", err=True)
    run_server(
        load,
        served_model_name or model,
        host=host,
        port=port,
        shutdown_timeout=shutdown_timeout,
        on_ready=lambda url: typer.echo(f"deploylab serve: ready at {url}", err=True),
    )

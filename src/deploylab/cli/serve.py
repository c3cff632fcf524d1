"""`deploylab serve`: the OpenAI-compatible server on the embedded engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from deploylab.catalog import DEFAULT_MODEL, resolve_model
from deploylab.errors import ConfigError, UsageError


def serve(
    model: list[str] = typer.Option(
        [DEFAULT_MODEL], help="A known model name or a local path (repeat for several models)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16 or float16."),
    max_num_seqs: int = typer.Option(64, help="Most requests in one batch."),
    max_model_len: int | None = typer.Option(None, help="Context length (default: the model's)."),
    served_model_name: list[str] = typer.Option(
        [], help="Model name in the API (default: --model); one per --model."
    ),
    max_waiting: int = typer.Option(
        256, help="Waiting-queue bound; past it requests get 429 with Retry-After at once."
    ),
    kv_cache_gib: float = typer.Option(1.0, help="KV-cache size on the CPU, GiB."),
    speculative_config: str | None = typer.Option(
        None,
        help='Speculative decoding as JSON (vLLM names), e.g. \'{"method": "ngram", '
        '"num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}\'; '
        "methods ngram, head, draft_model (docs/speculative.md).",
    ),
    lora: list[str] = typer.Option(
        [],
        "--lora",
        help="A PEFT LoRA adapter to serve as NAME=PATH (repeatable); requests "
        "pick it with model=NAME.",
    ),
    max_loras: int = typer.Option(4, help="LoRA adapters resident on the device at once."),
    max_lora_rank: int = typer.Option(16, help="Largest LoRA rank accepted."),
    max_cpu_loras: int | None = typer.Option(
        None, help="LoRA adapters kept in host memory (default: --max-loras)."
    ),
    allow_runtime_lora: bool = typer.Option(
        False, help="Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter."
    ),
    models_file: Path | None = typer.Option(
        None, help="YAML file of models with per-model settings (instead of --model)."
    ),
    memory_budget_gib: float | None = typer.Option(
        None,
        help="Device memory for resident models (weights + KV cache), GiB; waking a "
        "model puts least recently used idle ones to sleep. On the CPU: host memory.",
    ),
    max_resident_models: int | None = typer.Option(
        None, help="Most models resident at once (like Ollama's OLLAMA_MAX_LOADED_MODELS)."
    ),
    keep_alive: float | None = typer.Option(
        None, help="Put a model to sleep after this many idle seconds (default: never)."
    ),
    sleep_level: int = typer.Option(
        1, help="Level for automatic sleeps: 1 keeps weights in host memory, 2 drops them."
    ),
    enable_sleep_mode: bool = typer.Option(
        False, help="Add vLLM's POST /sleep, POST /wake_up and GET /is_sleeping endpoints."
    ),
    tensor_parallel_size: int = typer.Option(
        1,
        "--tensor-parallel-size",
        "-tp",
        help="Split the model over this many devices (one process each; gloo on the CPU, "
        "NCCL on GPUs).",
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
    async_scheduling: bool | None = typer.Option(
        None,
        "--async-scheduling/--no-async-scheduling",
        help="Prepare the next step and read sampled tokens back while the device runs "
        "(vLLM's async scheduling). Default: on with CUDA (H100: 1.47x offline throughput), "
        "off on the CPU (no gain there).",
    ),
    kv_offload_write_ahead: bool = typer.Option(
        False,
        "--kv-offload-write-ahead/--no-kv-offload-write-ahead",
        help="KV tiers: copy full prefix blocks to the host in the steps after they are "
        "computed, so evictions find them there (H200, 16k: returning TTFT 28.5 ms, 53.3 "
        "without).",
    ),
    cpu_compile: bool = typer.Option(
        False,
        "--cpu-compile/--no-cpu-compile",
        help="CPU: compile the single-stream decode step with torch.compile at start "
        "(1.26x faster tokens for one stream; the first start compiles for 1-3 min; with "
        "int4, greedy tokens may part from the eager step's, as close to the float path).",
    ),
    kv_offload_layerwise: bool | None = typer.Option(
        None,
        "--kv-offload-layerwise/--no-kv-offload-layerwise",
        help="KV tiers: copy layer by layer, each layer's compute waiting only for its own "
        "blocks (default: on; measured 1.9x lower TTFT than the chunked copy at 16k on an H100).",
    ),
    sleep_fixed_addresses: bool | None = typer.Option(
        None,
        "--sleep-fixed-addresses/--no-sleep-fixed-addresses",
        help="Keep each model's weights and KV cache at fixed addresses, so a wake keeps the "
        "CUDA graphs (H100: a 1B model wakes in 0.11 s instead of 0.63 s). Default: on with "
        "CUDA when a model can sleep (several models, --enable-sleep-mode, a memory budget or "
        "keep-alive), off on the CPU.",
    ),
    quantization: str = typer.Option(
        "auto",
        help="CPU weights: int4 (keep a GGUF's Q4_0/Q4_1 weights as int4 for decode-sized "
        "matmuls), none (the dequantized float path, exact) or auto (int4 on the CPU for a "
        "GGUF file; a seeded sample can then depend on which prompt blocks were cached; none "
        "is bit-stable). See docs/engine.md, 'Quantized CPU path'.",
    ),
    lm_head_quantization: str = typer.Option(
        "int8",
        help="The LM head under the CPU's int4 path: int8 (one scale per row) or int4 (groups "
        "of 32: a faster single-stream step, perplexity measured in docs/engine.md).",
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
    from deploylab.engine.cpu_threads import passive_omp_waits

    passive_omp_waits()  # before torch loads OpenMP
    from deploylab.engine.async_engine import AsyncEngine
    from deploylab.engine.config import LM_HEAD_QUANTIZATIONS, EngineConfig
    from deploylab.engine.spec_decode import parse_speculative_config
    from deploylab.server.launcher import serve as run_server

    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got '{device}'.")
    if not shutdown_timeout >= 0:
        raise UsageError(f"--shutdown-timeout must be >= 0 seconds, got {shutdown_timeout}.")
    if quantization not in ("auto", "none", "int4"):
        raise UsageError(f"--quantization must be auto, none or int4, got '{quantization}'.")
    if lm_head_quantization not in LM_HEAD_QUANTIZATIONS:
        raise UsageError(
            f"--lm-head-quantization must be {' or '.join(LM_HEAD_QUANTIZATIONS)}, got "
            f"'{lm_head_quantization}'."
        )
    if lm_head_quantization == "int4" and (quantization == "none" or device == "cuda"):
        raise UsageError(
            "--lm-head-quantization int4 needs the CPU's int4 path; drop it, or serve on the "
            "CPU with --quantization auto or int4."
        )
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}.")
    many = len(model) > 1 or models_file is not None or enable_sleep_mode
    many = many or memory_budget_gib is not None or keep_alive is not None
    many = many or max_resident_models is not None
    if max_resident_models is not None and max_resident_models < 1:
        raise UsageError(f"--max-resident-models must be >= 1, got {max_resident_models}.")
    if sleep_level not in (1, 2):
        raise UsageError(f"--sleep-level must be 1 or 2, got {sleep_level}.")
    if memory_budget_gib is not None and not memory_budget_gib > 0:
        raise UsageError(f"--memory-budget-gib must be > 0, got {memory_budget_gib}.")
    if keep_alive is not None and not keep_alive > 0:
        raise UsageError(f"--keep-alive must be > 0 seconds, got {keep_alive}.")
    if tensor_parallel_size < 1:
        raise UsageError(f"--tensor-parallel-size must be >= 1, got {tensor_parallel_size}.")
    if many and tensor_parallel_size > 1:
        raise UsageError(
            "--tensor-parallel-size > 1 works with one --model for now; run one server per "
            "tensor-parallel model."
        )
    if not many:
        resolve_model(model[0])  # fail fast, before binding, on a model that is not here
    try:
        spec = parse_speculative_config(speculative_config)
    except ConfigError as exc:
        raise UsageError(f"--speculative-config: {exc}") from None
    lora_modules = parse_lora_flags(lora)
    if many and (lora_modules or allow_runtime_lora):
        raise UsageError(
            "--lora and --allow-runtime-lora work with one --model for now; serve the adapters' "
            "base model on its own server, or leave the LoRA flags out."
        )
    config = EngineConfig(
        model=model[0],
        enable_lora=bool(lora_modules) or allow_runtime_lora,
        lora_modules=lora_modules,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
        max_cpu_loras=max_cpu_loras,
        speculative_config=asdict(spec) if spec is not None else None,
        device=device,
        dtype=dtype,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(2048, max_num_seqs),
        max_model_len=max_model_len,
        max_waiting=max_waiting,
        kv_cache_gib=kv_cache_gib,
        tensor_parallel_size=tensor_parallel_size,
        kv_offload_gib=kv_offload_gib,
        kv_offload_dir=kv_offload_dir,
        kv_offload_disk_gib=kv_offload_disk_gib,
        kv_offload_policy=kv_offload_policy,
        async_scheduling=async_scheduling,
        kv_offload_layerwise=kv_offload_layerwise,
        kv_offload_write_ahead=kv_offload_write_ahead,
        cpu_compile=cpu_compile,
        enable_sleep_mode=fixed_addresses(sleep_fixed_addresses, many, device),
        quantization=quantization,
        lm_head_quantization=lm_head_quantization,
    )

    if tensor_parallel_size > 1:  # heads that do not split: exit 2 before binding
        from deploylab.engine.distributed.loading import check_config

        check_config(config)

    def load() -> Any:
        return AsyncEngine(config)

    name = served_model_name[0] if served_model_name else model[0]
    if many:
        load, name = _many_models(
            model, served_model_name, models_file, config, memory_budget_gib, keep_alive,
            sleep_level, max_resident_models,
        )  # fmt: skip
    typer.echo(f"deploylab serve: loading {name} ...", err=True)
    run_server(
        load,
        name,
        enable_sleep_mode=enable_sleep_mode,
        host=host,
        port=port,
        shutdown_timeout=shutdown_timeout,
        allow_runtime_lora=allow_runtime_lora,
        on_ready=lambda url: typer.echo(f"deploylab serve: ready at {url}", err=True),
    )


def parse_lora_flags(flags: list[str]) -> dict[str, str]:
    """`--lora NAME=PATH` flags as {name: path}; UsageError for a malformed one."""
    from pathlib import Path

    modules: dict[str, str] = {}
    for flag in flags:
        name, sep, path = flag.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"--lora takes NAME=PATH (a PEFT adapter directory), got '{flag}'.")
        if name in modules:
            raise UsageError(f"--lora: the name '{name}' is given twice.")
        if not Path(path).expanduser().is_dir():
            raise UsageError(f"--lora {name}: '{path}' is not a directory.")
        modules[name] = path
    return modules


def _many_models(
    models: list[str],
    names: list[str],
    models_file: Path | None,
    base: Any,
    budget_gib: float | None,
    keep_alive: float | None,
    sleep_level: int,
    max_resident: int | None,
) -> tuple[Callable[[], Any], str]:
    """The loader of a many-model server (checked now: names, files) and its first name."""
    from deploylab.server.model_set import (
        build_manager,
        check_entries,
        entries_from_flags,
        load_models_file,
    )

    if models_file is not None:
        if len(models) > 1 or names:
            raise UsageError("Give either --models-file or --model/--served-model-name, not both.")
        entries = load_models_file(models_file)
    else:
        entries = entries_from_flags(models, names)
    check_entries(entries)
    budget = int(budget_gib * 1024**3) if budget_gib is not None else None

    def load() -> Any:
        return build_manager(entries, base, budget, keep_alive, sleep_level, max_resident)

    return load, ", ".join(e.name for e in entries)


def fixed_addresses(flag: bool | None, can_sleep: bool, device: str) -> bool:
    """`--sleep-fixed-addresses`, or by default: on when a model can sleep on CUDA."""
    if flag is not None:
        return flag
    from deploylab.engine.config import EngineConfig

    try:
        kind = EngineConfig(device=device).torch_device().type
    except ConfigError:
        return False  # the engine's own check reports the device error
    return can_sleep and kind == "cuda"

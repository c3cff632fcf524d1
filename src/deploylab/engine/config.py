"""`EngineConfig`: what model to serve and how big the engine's batches and caches are."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from deploylab.catalog import DEFAULT_MODEL
from deploylab.errors import ConfigError

LM_HEAD_QUANTIZATIONS = ("int8", "int4")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class EngineConfig:
    """Engine settings (vLLM names where vLLM has one).

    `kv_cache_gib` sizes the KV cache on the CPU; on CUDA the cache takes
    `gpu_memory_utilization` of the device memory minus what the weights and a working reserve
    use. `max_waiting` bounds the waiting queue of `AsyncEngine` (admission control).
    `random_weights` names a shape preset (e.g. "llama-3.2-1b") to serve random weights
    instead of loading `model` (benchmarks; token-id prompts only). `speculative_config`
    turns on speculative decoding (see `spec_decode.parse_speculative_config`).
    """

    model: str = DEFAULT_MODEL
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto: cuda when available, else cpu
    block_size: int = 16
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # default: the model's context, capped by the KV cache
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.9
    # vLLM's name: this many KV blocks on CUDA, whatever gpu_memory_utilization leaves
    # (tests and benchmarks that need an exact cache size); None sizes it from memory.
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    max_waiting: int = 1024
    seed: int = 0
    random_weights: str | None = None
    num_threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    cuda_graphs: bool = True  # capture decode steps on CUDA (with the Triton decode kernel)
    # CPU: compile the single-sequence decode step with torch.compile at start (cpu_decode.py;
    # 1-3 min on 2 cores, 30-40 s cached; 1.3x faster single-stream steps; with int4 its
    # greedy tokens may part from the eager step's: docs/engine.md).
    cpu_compile: bool = False
    # vLLM's async scheduling: prepare step n+1 and read step n's tokens back while the device
    # runs (engine/async_step.py); features it cannot combine with yet run synchronous steps.
    # None (default): on with CUDA (H100: 1.47x offline throughput), off on the CPU (no gain).
    async_scheduling: bool | None = None
    # Tree attention: decode rows sharing KV blocks read them once, in steps where that saves
    # enough reads (tree_attention.py). None: on CUDA with Triton; True: also on the CPU (the
    # grouped torch path, slower than the CPU's own decode path; for tests); False: never.
    tree_attention: bool | None = None
    # vLLM's speculative_config, e.g. {"method": "ngram", "num_speculative_tokens": 4}
    speculative_config: dict[str, Any] | str | None = None
    # Multi-LoRA (engine/lora): on with enable_lora or any lora_modules (name -> directory).
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # default: max_loras
    lora_modules: dict[str, str] | None = None
    # Devices (processes) the model is split over; see engine/distributed/.
    tensor_parallel_size: int = 1
    # vLLM's name: "mp" runs the tensor-parallel executor even at size 1 (to measure its
    # overhead); None/"uni" use it only when tensor_parallel_size > 1.
    distributed_executor_backend: str | None = None
    # KV cache tiers (docs/kv_tiers.md): host pool GiB (0: off), disk directory and its cap
    kv_offload_gib: float = 0.0
    kv_offload_dir: str | None = None
    kv_offload_disk_gib: float = 16.0
    kv_offload_policy: str = "auto"  # auto: a measured cost model; always: every hit
    # Tier copies layer by layer, the forward's layer l waiting only for layer l's blocks
    # (kv_tiers/layerwise.py). None (default): on; False: the chunked copy before the step.
    kv_offload_layerwise: bool | None = None
    # Write each full prefix-cache block to the host tier soon after it is computed, in steps
    # without tier hits, so an eviction finds it there and a return pays only the copies in.
    # Off by default until measured on an H100 (H200: docs/benchmarks.md).
    kv_offload_write_ahead: bool = False
    # Sleep mode (vLLM's flag): weights and KV cache at fixed addresses (engine/sleep_fixed.py)
    # so a wake maps memory back under them and keeps the CUDA graphs. Sleep works without it
    # too, moving the memory and re-capturing the graphs on wake (H100: 6x slower wakes).
    enable_sleep_mode: bool = False
    # vLLM's name. CPU path (engine/cpu_quant.py): "int4" keeps a GGUF's Q4_0/Q4_1 weights as
    # int4 for decode-sized matmuls; "none": the dequantized float path (exact); "auto": int4
    # on the CPU for a GGUF file, else none (docs/engine.md "Quantized CPU path").
    quantization: str = "auto"
    # The LM head under the int4 path: "int8" (one scale per row; perplexity +0.3 %) or
    # "int4" (Q4_1-style groups of 32, re-quantized from the file's Q8_0: a faster
    # single-stream step for a measured perplexity cost, docs/engine.md).
    lm_head_quantization: str = "int8"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"EngineConfig.{name} must be a positive integer, got {value!r}.")

        for name in (
            "block_size",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_waiting",
            "tensor_parallel_size",
        ):
            positive_int(name)
        if self.block_size & (self.block_size - 1) or self.block_size > 1024:
            raise ConfigError(
                f"EngineConfig.block_size must be a power of two up to 1024, got {self.block_size}."
            )
        if self.max_model_len is not None:
            positive_int("max_model_len")
        if self.num_threads is not None:
            positive_int("num_threads")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                f"EngineConfig.max_num_batched_tokens ({self.max_num_batched_tokens}) must be at "
                f"least max_num_seqs ({self.max_num_seqs}) so every running request can decode."
            )
        if not self.kv_cache_gib > 0:
            raise ConfigError(f"EngineConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib}.")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 2:
            raise ConfigError(
                "EngineConfig.num_gpu_blocks_override must be at least 2 (one usable block and "
                f"the scratch block), got {self.num_gpu_blocks_override}."
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                "EngineConfig.gpu_memory_utilization must be in (0, 1], got "
                f"{self.gpu_memory_utilization}."
            )
        if not isinstance(self.cpu_compile, bool):
            raise ConfigError(
                f"EngineConfig.cpu_compile must be True or False, got {self.cpu_compile!r}."
            )
        if self.quantization not in ("auto", "none", "int4"):
            raise ConfigError(
                f"EngineConfig.quantization '{self.quantization}' is not one of auto, none, int4."
            )
        if self.lm_head_quantization not in LM_HEAD_QUANTIZATIONS:
            raise ConfigError(
                f"EngineConfig.lm_head_quantization '{self.lm_head_quantization}' is not one "
                f"of {', '.join(LM_HEAD_QUANTIZATIONS)}."
            )
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ConfigError(
                f"EngineConfig.dtype '{self.dtype}' is not one of auto, {', '.join(_DTYPES)}."
            )
        backend = self.distributed_executor_backend
        if backend not in (None, "uni", "mp"):
            raise ConfigError(
                f"EngineConfig.distributed_executor_backend '{backend}' is not one of uni, mp."
            )
        if backend == "uni" and self.tensor_parallel_size > 1:
            raise ConfigError("tensor_parallel_size > 1 needs distributed_executor_backend 'mp'.")
        from deploylab.engine.spec_decode.config import parse_speculative_config

        parse_speculative_config(self.speculative_config)
        from deploylab.engine.lora.config import lora_config

        lora_config(self)
        from deploylab.engine.kv_tiers.config import validate_kv_tier_config

        validate_kv_tier_config(self)
        dev = self.device
        if dev not in ("auto", "cpu") and not (dev == "cuda" or dev.startswith("cuda:")):
            raise ConfigError(f"EngineConfig.device '{dev}' is not one of auto, cpu, cuda[:N].")

    def torch_device(self) -> torch.device:
        """The resolved device (CUDA must exist when asked for)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"EngineConfig.device is '{self.device}' but CUDA is not available.")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        """The resolved dtype for `device`."""
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings."""
        return asdict(self)

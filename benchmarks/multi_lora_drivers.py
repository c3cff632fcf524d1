"""Driver hooks of `multi_lora.py` for other engines' offline APIs (vLLM, TensorRT-LLM),
run only where those packages are installed, and a writer of PEFT adapter directories."""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def traffic(n: int, adapters: int, kind: str, seed: int = 0) -> list[int]:
    """An adapter index per request: uniform, or Zipf (s = 1.1) over the adapters."""
    rng = random.Random(seed)
    if kind == "uniform":
        return [rng.randrange(adapters) for _ in range(n)]
    weights = [1 / (i + 1) ** 1.1 for i in range(adapters)]
    return rng.choices(range(adapters), weights=weights, k=n)


def save_peft(adapter: Any, path: str) -> None:
    """Write an in-memory adapter as a PEFT directory (scaling 1: lora_alpha = r)."""
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, m), (a, b) in adapter.weights.items():
        part = "self_attn" if m in TARGETS[:4] else "mlp"
        key = f"base_model.model.model.layers.{layer}.{part}.{m}"
        tensors[f"{key}.lora_A.weight"] = a.contiguous()
        tensors[f"{key}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "r": adapter.rank, "lora_alpha": adapter.rank,
        "target_modules": list(TARGETS), "bias": "none", "task_type": "CAUSAL_LM",
    }  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))


def vllm_offline(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """vLLM's LLM with enable_lora (adapters must be PEFT directories next to the model in
    MODEL_DIR/loras/*); skipped when vLLM is not installed."""
    try:
        from vllm import LLM, SamplingParams  # type: ignore[import-not-found]
        from vllm.lora.request import LoRARequest  # type: ignore[import-not-found]
    except ImportError:
        return {"skipped": "vllm is not installed"}
    from pathlib import Path

    dirs = sorted(p for p in (Path(model_dir) / "loras").iterdir() if p.is_dir())
    rank = max(args.ranks)
    llm = LLM(model=model_dir, enable_lora=True, max_loras=len(dirs), max_lora_rank=rank)
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(100, 1000) for _ in range(args.input_len)]}
               for _ in range(args.num_requests)]  # fmt: skip
    reqs = [LoRARequest(d.name, i + 1, str(d)) for i, d in enumerate(dirs)]
    pick = [reqs[i] for i in traffic(args.num_requests, len(reqs), "uniform")]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate(prompts, params, lora_request=pick)
    seconds = time.perf_counter() - t0
    tokens = args.num_requests * args.output_len
    return {"seconds": seconds, "output_tokens": tokens, "output_tps": tokens / seconds}


def trtllm_offline(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """TensorRT-LLM's LLM API with LoRA (MODEL_DIR/loras/* PEFT directories); skipped when
    tensorrt_llm is not installed."""
    try:
        from tensorrt_llm import LLM, SamplingParams  # type: ignore[import-not-found]
        from tensorrt_llm.executor import LoRARequest  # type: ignore[import-not-found]
        from tensorrt_llm.lora_manager import LoraConfig  # type: ignore[import-not-found]
    except ImportError:
        return {"skipped": "tensorrt_llm is not installed"}
    from pathlib import Path

    dirs = sorted(p for p in (Path(model_dir) / "loras").iterdir() if p.is_dir())
    lora_config = LoraConfig(
        lora_dir=[str(dirs[0])], max_lora_rank=max(args.ranks), max_loras=len(dirs),
        max_cpu_loras=len(dirs),
    )  # fmt: skip
    llm = LLM(model=model_dir, lora_config=lora_config)
    rng = random.Random(0)
    prompts = [
        [rng.randrange(100, 1000) for _ in range(args.input_len)] for _ in range(args.num_requests)
    ]
    reqs = [LoRARequest(d.name, i + 1, str(d)) for i, d in enumerate(dirs)]
    pick = [reqs[i] for i in traffic(args.num_requests, len(reqs), "uniform")]
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate(prompts, params, lora_request=pick)
    seconds = time.perf_counter() - t0
    tokens = args.num_requests * args.output_len
    return {"seconds": seconds, "output_tokens": tokens, "output_tps": tokens / seconds}

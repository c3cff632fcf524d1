"""transformers baselines for `offline_throughput.py` beyond plain batched `generate`.

- `run_hf_static`: batched `generate` with a static KV cache, which transformers compiles
  with `torch.compile` (timed on a second pass, so compilation is not counted);
- `run_hf_continuous`: transformers' own continuous batching (`init_continuous_batching`,
  paged attention), each request with its own `max_new_tokens`.
Both return the benchmark's `Result`, counting only the requested output tokens.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _result(name: str, seconds: float, reqs: list[tuple[list[int], int]]) -> Any:
    from offline_throughput import Result  # type: ignore[import-not-found]

    expected = sum(n for _, n in reqs)
    return Result(name, seconds, expected, expected + sum(len(p) for p, _ in reqs))


def run_hf_static(hf: Any, reqs: list[tuple[list[int], int]], batch_size: int) -> Any:
    """Left-padded batches through `generate(cache_implementation="static")`; the first pass
    compiles (shapes are per batch), the second is timed."""
    from offline_throughput import run_hf  # type: ignore[import-not-found]

    hf.generation_config.cache_implementation = "static"
    try:
        t0 = time.perf_counter()
        run_hf(hf, reqs, batch_size)
        print(f"transformers static: compile pass {time.perf_counter() - t0:.1f} s", flush=True)
        timed = run_hf(hf, reqs, batch_size)
    finally:
        hf.generation_config.cache_implementation = None
    return _result("hf-static-compiled", timed.seconds, reqs)


def run_hf_continuous(hf: Any, reqs: list[tuple[list[int], int]], deadline_s: float = 400.0) -> Any:
    """transformers' continuous batching manager (the machinery behind `generate_batch`),
    greedy, EOS off, each request with its own `max_new_tokens`; its warm-up (CUDA graph
    capture) is not timed."""
    from transformers import GenerationConfig

    try:
        from transformers.generation.continuous_batching import WorkloadHints
    except ImportError:  # older layouts
        hints = None
    else:
        hints = WorkloadHints(
            max_prompt_length=max(len(p) for p, _ in reqs),
            max_generated_length=max(n for _, n in reqs),
        )
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max(n for _, n in reqs), eos_token_id=-1, pad_token_id=0
    )
    device = next(hf.parameters()).device
    with hf.continuous_batching_context_manager(
        generation_config=config, block=True, timeout=5, warmup=True, workload_hints=hints
    ) as manager:
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for i, (prompt, n) in enumerate(reqs):
            manager.add_request(input_ids=prompt, request_id=f"r{i}", max_new_tokens=n)
        produced, done = 0, 0
        while done < len(reqs):
            if time.perf_counter() - start > deadline_s:
                raise RuntimeError(f"transformers continuous batching: {done} done after "
                                   f"{deadline_s:.0f} s")  # fmt: skip
            out = manager.get_result(timeout=1)
            if out is None:
                if not manager.is_running():
                    raise RuntimeError("transformers continuous batching thread died")
                continue
            if out.is_finished():
                done += 1
                produced += len(out.generated_tokens)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    expected = sum(n for _, n in reqs)
    if produced != expected:
        print(f"transformers continuous: produced {produced} tokens, asked {expected}")
    return _result("hf-continuous", seconds, reqs)

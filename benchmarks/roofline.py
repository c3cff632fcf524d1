"""Decode step time and prefill speed of deploylab's engine beside their rooflines (CUDA).

Decode floor = (weight bytes + KV bytes of every context) / memory bandwidth, with the
bandwidth measured in the same run (a device-to-device copy, bytes read + written) and the
datasheet figure shown too. Prefill floor = FLOPs / bf16 peak (datasheet, and a large matmul
measured in the same run). Three decode timings per batch size:
  - graph: the captured CUDA graph replayed alone (the GPU's time for the step)
  - graph+inputs: the runner's graph path, host-side input copies included
  - engine step: `LLMEngine.step()` end to end (scheduler, prepare, sampling, host sync)
Prefill twice: one prompt on an idle engine (the step's wall clock, time to first token), and
eight prompts queued together, prefilled one per step back to back (prefill throughput).

    python benchmarks/roofline.py --shape llama-3.2-1b --batch-sizes 1,64,256 --context 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="llama-3.2-1b", help="random-weight preset")
    p.add_argument("--batch-sizes", default="1,64,256")
    p.add_argument("--skip-decode", action="store_true", help="prefill only")
    p.add_argument("--context", type=int, default=1024, help="context length of every sequence")
    p.add_argument("--prefill-tokens", type=int, default=4096)
    p.add_argument("--engine-steps", type=int, default=30, help="timed engine steps per batch")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument(
        "--profile", action="store_true", help="print the top kernels of decode and prefill"
    )
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def bench_ms(fn: Any) -> float:
    """Median milliseconds of `fn` on the GPU (CUDA events, warm-up excluded)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=300, return_mode="median"))


def measure_bandwidth_gbs() -> float:
    """Device-to-device copy of 2 GiB: (bytes read + written) / time."""
    src = torch.empty(2**30, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def measure_matmul_tflops(n: int = 8192) -> float:
    """bf16 n x n x n matrix product rate on random data."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    return 2 * n**3 / ms / 1e9


@torch.inference_mode()  # the graphs' static inputs are inference tensors
def graph_decode(engine: Any, batch: int, context: int) -> tuple[float, float]:
    """(replay-only ms, replay with input copies ms) for `batch` sequences at `context`."""
    graphs = engine.runner.graphs
    bs = engine.runner.block_size
    width = -(-context // bs)
    tables = [list(range(i * width, (i + 1) * width)) for i in range(batch)]
    pos = [context - 1] * batch
    slots = [t[(context - 1) // bs] * bs + (context - 1) % bs for t in tables]
    ids = [1000 + i for i in range(batch)]
    run = lambda: graphs.run(ids, pos, slots, tables, [context] * batch)  # noqa: E731
    with_inputs = bench_ms(run)
    run()
    size = next(s for s in graphs.sizes if s >= batch)
    replay = bench_ms(graphs.graphs[size].graph.replay)
    return replay, with_inputs


def prefill_steps(batch: int, context: int, budget: int) -> int:
    """Steps the engine needs to prefill `batch` prompts of `context` tokens (upper bound)."""
    return -(-batch * context // budget) + 2


def engine_step_ms(engine: Any, batch: int, context: int, steps: int) -> float:
    """Median wall-clock ms of `engine.step()` with `batch` sequences decoding at ~`context`.
    The first prompts prefilled decode while the rest prefill, so each may produce that many
    tokens more before the timed steps: none may finish before the timed steps end."""
    from deploylab.engine import SamplingParams

    ahead = prefill_steps(batch, context, engine.config.max_num_batched_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=steps + ahead + 8, ignore_eos=True)
    gen = torch.Generator().manual_seed(batch)
    for i in range(batch):
        prompt = torch.randint(100, 30000, (context - 1,), generator=gen).tolist()
        engine.add_request(f"r{batch}-{i}", prompt, params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine._seqs.values()):
        engine.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        rows = len(engine.step())
        times.append((time.perf_counter() - t0) * 1e3)
        if rows != batch:
            raise RuntimeError(f"a timed step decoded {rows} sequences, not {batch}")
    while engine.has_unfinished_requests():
        engine.step()
    engine._seqs.clear()
    return statistics.median(times)


def timed_prefills(engine: Any, tokens: int, prompts: int, runs: int, seed: int) -> list[float]:
    """Per run: queue `prompts` random prompts of `tokens` tokens, step until all have sampled
    one token; milliseconds per prompt (each run is a "prefill" profiler region)."""
    from deploylab.engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for r in range(runs):
        for i in range(prompts):
            prompt = torch.randint(100, 30000, (tokens,), generator=gen).tolist()
            engine.add_request(f"p{seed}-{r}-{i}", prompt, params)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.profiler.record_function("prefill"):
            while engine.has_unfinished_requests():
                engine.step()
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3 / prompts)
    engine._seqs.clear()
    return times


def prefill_ms(engine: Any, tokens: int) -> float:
    """Median wall-clock ms to prefill one `tokens`-token prompt on an idle engine and sample
    one token (the first of six runs is a warm-up)."""
    return statistics.median(timed_prefills(engine, tokens, 1, 6, seed=7)[1:])


def profile_step(engine: Any, batch: int, context: int) -> None:
    """Top CUDA kernels of eager decode steps (graphs hide their kernels from the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    graphs, engine.runner.graphs = engine.runner.graphs, None
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine_step_ms(engine, batch, context, 5)
    engine.runner.graphs = graphs
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20), flush=True)


def prefill_stream_ms(engine: Any, tokens: int, prompts: int = 8) -> float:
    """Milliseconds per prompt when `prompts` prompts of `tokens` tokens are queued together
    and prefilled one per step, back to back (prefill throughput, GPU never left idle long)."""
    return statistics.median(timed_prefills(engine, tokens, prompts, 3, seed=8))


def _annotated(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)

    return wrapper


def profile_prefill(engine: Any, tokens: int) -> None:
    """Top CUDA kernels of one prefill, and where the GPU sat idle during it."""
    from torch.profiler import ProfilerActivity, profile

    from gpu_timeline import report  # type: ignore[import-not-found]

    # The engine's phases as named regions, so the idle gaps can be read against them.
    patched = [
        (engine.scheduler, "schedule"), (engine.runner, "prepare"),
        (engine.runner.model, "forward"), (engine.runner.model, "compute_logits"),
        (engine, "sampler"), (engine, "_append_token"),
    ]  # fmt: skip
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in patched]
    for obj, attr, fn in saved:
        setattr(obj, attr, _annotated(f"dl.{attr}", fn))
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prefill_ms(engine, tokens)
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
    print(report(prof, "prefill"), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("This benchmark needs a CUDA GPU (none is visible to PyTorch).", file=sys.stderr)
        return 2
    from deploylab.engine import LLM
    from deploylab.engine.models.cost import decode_step_bytes, prefill_flops
    from deploylab.hardware import lookup

    name = torch.cuda.get_device_name()
    sheet = lookup(name)
    bw = measure_bandwidth_gbs()
    tflops = measure_matmul_tflops()
    print(
        f"{name}: measured copy {bw:.0f} GB/s (sheet {sheet.bandwidth_gbs:.0f}), "
        f"bf16 matmul {tflops:.0f} TFLOP/s (sheet {sheet.bf16_tflops:.0f})",
        flush=True,
    )
    batches = [int(b) for b in args.batch_sizes.split(",")]
    budget = max(args.prefill_tokens, max(batches))  # tokens per step
    decode_len = (
        args.context + args.engine_steps + 64 + prefill_steps(max(batches), args.context, budget)
    )
    llm = LLM(
        random_weights=args.shape,
        device="cuda",
        dtype="bfloat16",
        max_num_seqs=max(batches),
        max_num_batched_tokens=budget,
        max_model_len=max(decode_len, args.prefill_tokens + 16),
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=False,
    )
    engine = llm.llm_engine
    cfg = engine.model_config
    for layer in engine.kv_cache.layers:  # real-looking values, so no path sees all zeros
        for t in layer:
            t.normal_()
    rows: list[dict[str, Any]] = []
    for batch in [] if args.skip_decode else batches:
        floor_bytes = decode_step_bytes(cfg, 2, [args.context] * batch)
        floor_ms = floor_bytes / bw / 1e6
        replay, with_inputs = graph_decode(engine, batch, args.context)
        step = engine_step_ms(engine, batch, args.context, args.engine_steps)
        row = dict(
            batch=batch, context=args.context, floor_ms=floor_ms,
            sheet_floor_ms=sheet.decode_floor_ms(floor_bytes), graph_ms=replay,
            graph_inputs_ms=with_inputs, engine_step_ms=step, ratio=replay / floor_ms,
        )  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    flops = prefill_flops(cfg, args.prefill_tokens)
    pre = prefill_ms(engine, args.prefill_tokens)
    stream = prefill_stream_ms(engine, args.prefill_tokens)
    prefill = dict(
        tokens=args.prefill_tokens, ms=pre, tflops=flops / pre / 1e9,
        share_of_sheet=flops / pre / 1e9 / sheet.bf16_tflops,
        share_of_measured=flops / pre / 1e9 / tflops,
        stream_ms=stream, stream_tokens_per_s=args.prefill_tokens / stream * 1e3,
        stream_share_of_sheet=flops / stream / 1e9 / sheet.bf16_tflops,
    )  # fmt: skip
    if args.profile:
        if not args.skip_decode:
            profile_step(engine, max(batches), args.context)
        profile_prefill(engine, args.prefill_tokens)
    print(f"\n{name}, {args.shape}, bf16, context {args.context}; bandwidth {bw:.0f} GB/s "
          f"measured, {sheet.bandwidth_gbs:.0f} datasheet")  # fmt: skip
    head = f"{'batch':>6}{'floor ms':>10}{'graph ms':>10}{'x floor':>9}{'+inputs':>9}{'step ms':>9}"
    print(head)
    for r in rows:
        print(
            f"{r['batch']:>6}{r['floor_ms']:>10.3f}{r['graph_ms']:>10.3f}{r['ratio']:>9.2f}"
            f"{r['graph_inputs_ms']:>9.3f}{r['engine_step_ms']:>9.3f}"
        )
    print(
        f"prefill {args.prefill_tokens} tokens: {pre:.2f} ms, {prefill['tflops']:.0f} TFLOP/s = "
        f"{100 * prefill['share_of_sheet']:.0f}% of datasheet bf16, "
        f"{100 * prefill['share_of_measured']:.0f}% of measured matmul"
    )
    print(
        f"prefill back to back (8 prompts of {args.prefill_tokens}, one per step): "
        f"{stream:.2f} ms each, {prefill['stream_tokens_per_s']:,.0f} tokens/s, "
        f"{flops / stream / 1e9:.0f} TFLOP/s = {100 * prefill['stream_share_of_sheet']:.0f}% "
        f"of datasheet bf16, {100 * flops / stream / 1e9 / tflops:.0f}% of measured matmul"
    )
    if args.json:
        payload = dict(
            device=name, shape=args.shape, bandwidth_gbs=bw, matmul_tflops=tflops,
            sheet=sheet.__dict__, decode=rows, prefill=prefill,
        )  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

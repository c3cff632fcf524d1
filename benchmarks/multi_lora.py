"""Multi-LoRA benchmark: deploylab's engine with many adapters vs the base model alone and
vs transformers + peft's mixed-adapter batch path, in the same run.

Offline throughput for each adapter count x rank x traffic split (uniform, or Zipf with
s = 1.1 over the adapters), every request with its own adapter; the base model alone on the
same prompts; transformers + peft (`generate(adapter_names=...)`, one batch of
--peft-batch-size requests at a time, fixed lengths so no padding is wasted) on the
configurations named by --peft-configs; and the mean decode-step time of a --step-batch
request batch spread over --step-adapters adapters vs the base model's step. Adapters are
random (non-zero A and B) on all 7 projections and built in memory (no files).

    python benchmarks/multi_lora.py --adapters 1 4 16 --ranks 8 16 --num-requests 16
    PYTHONPATH=src python benchmarks/multi_lora.py --random-weights llama-3.2-1b --device cuda \\
        --adapters 1 4 16 64 --ranks 8 16 64 --num-requests 256 --out results.json

--vllm / --trtllm run the same offline workload through vLLM's or TensorRT-LLM's LLM API
where those packages are installed (recorded as skipped otherwise).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from typing import Any

import torch

from multi_lora_drivers import TARGETS, save_peft, traffic, trtllm_offline, vllm_offline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--random-weights", metavar="SHAPE", help="random weights of a preset shape")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64])
    p.add_argument("--traffic", nargs="+", default=["uniform", "zipf"])
    p.add_argument("--num-requests", type=int, default=128)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=4096)
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="CPU only")
    p.add_argument("--peft-configs", nargs="*", default=["16x16"], help="ADAPTERSxRANK")
    p.add_argument("--peft-batch-size", type=int, default=64)
    p.add_argument("--peft-requests", type=int, default=None, help="default: --num-requests")
    p.add_argument("--step-batch", type=int, default=64)
    p.add_argument("--step-adapters", type=int, default=16)
    p.add_argument("--step-rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument(
        "--step-repeats", type=int, default=3,
        help="base and LoRA step times measured alternately this many times (medians)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--vllm", metavar="MODEL_DIR", help="also run vLLM's LLM on this model")
    p.add_argument("--trtllm", metavar="MODEL_DIR", help="also run TensorRT-LLM's LLM API")
    p.add_argument(
        "--lora-decode", choices=("fused", "tiles", "split"), default=None,
        help="CUDA decode kernels (default: the engine's first that passes its self-check)",
    )  # fmt: skip
    p.add_argument("--lora-tile-rows", type=int, help="rows per program of 'tiles'")
    p.add_argument("--no-lora-overlap", action="store_true", help="shrink on the main stream")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--plot", help="draw throughput against adapter count into this PNG")
    p.add_argument("--plot-from", metavar="JSON", help="only plot an earlier run's results")
    p.add_argument(
        "--save-adapters", metavar="DIR", help="only write --adapters[0] random PEFT adapters "
        "of --ranks[0] as DIR/lora-0.. (for `deploylab serve --lora`, vLLM, TensorRT-LLM)"
    )  # fmt: skip
    return p.parse_args(argv)


def load_base(args: argparse.Namespace) -> tuple[Any, torch.device, torch.dtype]:
    from deploylab.engine.config import EngineConfig

    cfg = EngineConfig(device=args.device, dtype=args.dtype)
    device = cfg.torch_device()
    dtype = cfg.torch_dtype(device)
    if args.random_weights:
        from deploylab.engine.models.loader import init_random_model
        from deploylab.engine.models.presets import get_preset

        return init_random_model(get_preset(args.random_weights), dtype, device), device, dtype
    from deploylab.catalog import resolve_model
    from deploylab.engine.models.loader import load_model

    model, _ = load_model(resolve_model(args.model), dtype, device)
    return model, device, dtype


def random_adapters(model: Any, count: int, rank: int, device: torch.device) -> list[Any]:
    """`count` adapters on all 7 projections; 4 distinct random weight sets, cycled (the
    engine copies each adapter into its own slot, so the work is the same as for 4 unique)."""
    from deploylab.engine.lora import LoraAdapter
    from deploylab.engine.lora.adapter import module_shapes

    shapes = module_shapes(model.config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(rank)
    sets = []
    for _ in range(min(4, count)):
        weights = {}
        for layer in range(model.config.num_hidden_layers):
            for m in TARGETS:
                fan_in, fan_out = shapes[m]
                a = (torch.randn(rank, fan_in, generator=gen) / fan_in**0.5).to(dtype)
                b = (torch.randn(fan_out, rank, generator=gen) * 0.01).to(dtype)
                if device.type == "cuda":
                    a, b = a.pin_memory(), b.pin_memory()
                weights[(layer, m)] = (a, b)
        sets.append(weights)
    return [LoraAdapter(f"r{rank}-{i}", "", rank, 1.0, sets[i % len(sets)]) for i in range(count)]


def make_engine(args: argparse.Namespace, model: Any, rank: int | None, loras: int) -> Any:
    from deploylab.engine import EngineConfig, LLMEngine

    settings: dict[str, Any] = dict(
        # The base engine lives beside each LoRA one (KV sizing counts memory already used).
        gpu_memory_utilization=0.3 if rank is None else 0.6,
        # Like for like: LoRA engines step synchronously, so the base engine does too (with
        # CUDA it would default to async scheduling, 1.2-1.5x faster per step).
        async_scheduling=False,
        device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_gib=args.kv_cache_gib,
        max_model_len=args.input_len + args.output_len + args.steps + 32,
    )  # fmt: skip
    if rank is not None:
        settings.update(enable_lora=True, max_loras=loras, max_lora_rank=rank, max_cpu_loras=loras)
    return LLMEngine(EngineConfig(**settings), model=model, tokenizer=None)


def cleanup() -> None:
    """Collect dropped engines (their KV cache, graphs and slots) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def offline(
    engine: Any, prompts: list[list[int]], names: list[str | None], out_len: int
) -> dict[str, float]:
    """Run every request to completion; output tokens per second."""
    from deploylab.engine import LLM, SamplingParams

    llm = LLM(llm_engine=engine)
    params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True)
    # Warm-up on the whole workload (kernels, graphs, buffers at full size, adapter slots):
    # the first full-size run of an engine is slower, which would bias a single run.
    warm = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    llm.generate(prompts, warm, lora=names)
    sync(engine.device)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, lora=names)
    sync(engine.device)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outs)
    return {"seconds": seconds, "output_tokens": tokens, "output_tps": tokens / seconds}


def decode_step_ms(
    engine: Any, prompts: list[list[int]], names: list[str | None], steps: int
) -> float:
    """Mean time of a decode step once every request of the batch is decoding."""
    from deploylab.engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=steps + 64, ignore_eos=True)
    for i, (p, n) in enumerate(zip(prompts, names, strict=True)):
        engine.add_request(f"step-{i}", p, params, lora_name=n)
    while engine.scheduler.waiting or any(
        s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running
    ):
        engine.step()
    for _ in range(5):
        engine.step()
    sync(engine.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(engine.device)
    ms = (time.perf_counter() - t0) / steps * 1e3
    for i in range(len(prompts)):
        engine.abort(f"step-{i}")
    return ms


def peft_offline(
    model: Any,
    adapters: list[Any],
    prompts: list[list[int]],
    idx: list[int],
    args: argparse.Namespace,
) -> dict[str, float]:
    """transformers + peft: every adapter added to one PeftModel, mixed batches through
    `generate(adapter_names=...)`."""
    import peft

    from deploylab.engine.models.hf_interop import transformers_twin

    twin = transformers_twin(model)
    rank = adapters[0].rank
    config = peft.LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(TARGETS), init_lora_weights=False
    )
    pm = peft.get_peft_model(twin, config, adapter_name="a0", autocast_adapter_dtype=False)
    for i in range(1, len(adapters)):
        pm.add_adapter(f"a{i}", config)
    pm.eval()
    device = next(model.parameters()).device
    names = [f"a{i}" for i in idx]
    bsz, out_len = args.peft_batch_size, args.output_len
    ids = torch.tensor(prompts, device=device)

    def run(lo: int, hi: int, n_new: int) -> None:
        pm.generate(
            input_ids=ids[lo:hi], attention_mask=torch.ones_like(ids[lo:hi]),
            adapter_names=names[lo:hi], max_new_tokens=n_new, min_new_tokens=n_new,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip

    with torch.inference_mode():
        run(0, min(4, len(prompts)), 2)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for lo in range(0, len(prompts), bsz):
            run(lo, min(lo + bsz, len(prompts)), out_len)
        sync(device)
    seconds = time.perf_counter() - t0
    tokens = len(prompts) * out_len
    return {"seconds": seconds, "output_tokens": tokens, "output_tps": tokens / seconds}


def engine_side(
    args: argparse.Namespace,
    model: Any,
    prompts: list[list[int]],
    base: tuple[Any, float],
    save: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Every adapter count x rank x traffic run, the peft baselines, and the decode-step
    times (`base` = the base engine and its throughput); `save(runs, peft_runs, step)` after
    each rank (partial results survive a time limit)."""
    base_engine, base_tps = base
    runs: list[dict[str, Any]] = []
    peft_runs: list[dict[str, Any]] = []
    step: dict[str, Any] = {}
    wanted = {tuple(int(v) for v in c.split("x")) for c in args.peft_configs}
    device = next(model.parameters()).device
    n_req = len(prompts)
    for rank in args.ranks:
        step_here = rank == args.step_rank and args.step_adapters > 0
        count = max([*args.adapters, args.step_adapters if step_here else 0])
        adapters = random_adapters(model, count, rank, device)
        engine = make_engine(args, model, rank, count)
        for adapter in adapters:
            engine.lora.register(adapter)
        for n in args.adapters:
            for kind in args.traffic:
                idx = traffic(n_req, n, kind)
                r = offline(engine, prompts, [adapters[i].name for i in idx], args.output_len)
                r.update(adapters=n, rank=rank, traffic=kind, vs_base=r["output_tps"] / base_tps)
                runs.append(r)
                print(f"  {n:>3} adapters  rank {rank:>3}  {kind:<7}  {r['output_tps']:9.1f} tok/s"
                      f"  ({r['vs_base']:.2f} x base)", flush=True)  # fmt: skip
        if step_here:
            names = [adapters[i % args.step_adapters].name for i in range(args.step_batch)]
            step = step_times(
                args, base_engine, engine, step_prompts(prompts, args.step_batch), names
            )
        engine_tps = {
            (r["adapters"], r["traffic"]): r["output_tps"] for r in runs if r["rank"] == rank
        }
        del engine  # before the next engine sizes its KV cache from free memory
        cleanup()
        for n in args.adapters:
            if (n, rank) not in wanted:
                continue
            m = args.peft_requests or n_req
            idx = traffic(n_req, n, "uniform")[:m]
            p = peft_offline(model, adapters[:n], prompts[:m], idx, args)
            p.update(adapters=n, rank=rank, traffic="uniform", requests=m)
            p["engine_speedup"] = engine_tps[(n, "uniform")] / p["output_tps"]
            peft_runs.append(p)
            print(f"  peft {n} adapters rank {rank}: {p['output_tps']:.1f} tok/s; engine is "
                  f"{p['engine_speedup']:.1f}x", flush=True)  # fmt: skip
        del adapters
        gc.collect()
        if save is not None:
            save(runs, peft_runs, step)
    return runs, peft_runs, step


def step_times(
    args: argparse.Namespace, base: Any, lora: Any, prompts: list[list[int]], names: list[str]
) -> dict[str, Any]:
    """Decode-step times of the base and the LoRA engine, measured alternately (a busy
    machine's load drifts); medians and every sample."""
    import statistics

    base_ms: list[float] = []
    lora_ms: list[float] = []
    for _ in range(args.step_repeats):
        base_ms.append(decode_step_ms(base, prompts, [None] * len(prompts), args.steps))
        lora_ms.append(decode_step_ms(lora, prompts, list(names), args.steps))
    b, m = statistics.median(base_ms), statistics.median(lora_ms)
    return {
        "batch": len(prompts), "adapters": args.step_adapters, "rank": args.step_rank,
        "base_ms": b, "lora_ms": m, "ratio": m / b,
        "base_samples": base_ms, "lora_samples": lora_ms,
    }  # fmt: skip


def step_prompts(prompts: list[list[int]], b: int) -> list[list[int]]:
    """`b` prompts for the step-time batch (cycled if there are fewer requests)."""
    return [prompts[i % len(prompts)] for i in range(b)]


def plot(results: dict[str, Any], path: str) -> None:
    """Output tokens/s against adapter count, one line per rank and traffic split, with the
    base model alone and transformers + peft marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for r in results["lora"]:
        lines.setdefault((r["rank"], r["traffic"]), []).append((r["adapters"], r["output_tps"]))
    for (rank, kind), pts in sorted(lines.items()):
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(
            xs, ys, marker="o", ls="-" if kind == "uniform" else "--", label=f"rank {rank}, {kind}"
        )
    ax.axhline(results["base"]["output_tps"], color="k", lw=1, label="base model alone")
    for p in results.get("peft", []):
        ax.scatter([p["adapters"]], [p["output_tps"]], marker="x", s=60, color="red",
                   label=f"transformers + peft, rank {p['rank']}", zorder=3)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("adapters in the workload")
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"multi-LoRA offline throughput ({results['device']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict[str, Any]) -> str:
    """The throughput grid as a markdown table (output tokens/s; rows: adapter counts)."""
    cols = sorted({(r["rank"], r["traffic"]) for r in results["lora"]})
    tps = {(r["adapters"], r["rank"], r["traffic"]): r["output_tps"] for r in results["lora"]}
    head = "| adapters | " + " | ".join(f"rank {r} {t}" for r, t in cols) + " |"
    lines = [head, "|---:" * (len(cols) + 1) + "|"]
    for n in sorted({r["adapters"] for r in results["lora"]}):
        cells = [f"{tps[n, r, t]:.1f}" if (n, r, t) in tps else "-" for r, t in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def choose_kernels(args: argparse.Namespace) -> None:
    """Apply `--lora-decode`, `--lora-tile-rows` and `--no-lora-overlap` (CUDA only)."""
    if args.lora_decode is None and args.lora_tile_rows is None and not args.no_lora_overlap:
        return
    from deploylab.engine.lora import triton_ops

    if args.lora_decode:
        triton_ops.DECODE_MODES = (args.lora_decode,)
    if args.lora_tile_rows:
        triton_ops.TILE_ROWS = args.lora_tile_rows
    if args.no_lora_overlap:
        kernels = triton_ops.LoraKernels
        triton_ops.LoraKernels = lambda decode="fused": kernels(decode, overlap=False)  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_from:
        with open(args.plot_from) as f:
            results = json.load(f)
        print(markdown(results))
        if args.plot:
            plot(results, args.plot)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    choose_kernels(args)
    model, device, dtype = load_base(args)
    if args.save_adapters:
        for i, adapter in enumerate(
            random_adapters(model, args.adapters[0], args.ranks[0], device)
        ):
            save_peft(adapter, f"{args.save_adapters}/lora-{i}")
        return 0
    rng = random.Random(0)
    vocab = min(model.config.vocab_size, 30000)
    prompts = [[rng.randrange(100, vocab) for _ in range(args.input_len)]
               for _ in range(args.num_requests)]  # fmt: skip
    cpu = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"multi-LoRA benchmark on {name} ({dtype}), {args.num_requests} requests "
          f"{args.input_len} in / {args.output_len} out", flush=True)  # fmt: skip
    engine = make_engine(args, model, None, 0)
    base = offline(engine, prompts, [None] * len(prompts), args.output_len)
    print(f"  base model alone: {base['output_tps']:.1f} tok/s", flush=True)

    def save(runs: Any, peft_runs: Any, step: Any) -> None:
        if args.out:  # partial results survive a time limit
            partial = {"device": name, "base": base, "lora": runs, "peft": peft_runs,
                       "decode_step": step, "partial": True}  # fmt: skip
            with open(args.out, "w") as f:
                json.dump(partial, f, indent=1)

    save([], [], {})
    runs, peft_runs, step = engine_side(args, model, prompts, (engine, base["output_tps"]), save)
    del engine
    cleanup()
    if step:
        print(
            f"  decode step, {step['batch']} requests: base {step['base_ms']:.2f} ms, over "
            f"{step['adapters']} adapters {step['lora_ms']:.2f} ms ({step['ratio']:.2f}x)"
        )
    results = {
        "device": name, "dtype": str(dtype), "torch": torch.__version__, "args": vars(args),
        "base": base, "lora": runs, "peft": peft_runs, "decode_step": step,
        "vllm": vllm_offline(args.vllm, args) if args.vllm else {"skipped": "not asked"},
        "trtllm": trtllm_offline(args.trtllm, args) if args.trtllm else {"skipped": "not asked"},
    }  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ARMT on a GPU in one call: equivalence check, grouped-GEMM backends, profile, benchmark.

Run from the repository root (no install needed):

    PYTHONPATH=src python3 benchmarks/armt_gpu.py --out DIR

1. Diagonal vs sequential on the Llama-3.2-1B shape (bf16 and a float32 4-layer variant):
   relative error of all hidden states and of the final memories.
2. The four per-layer GEMMs of one full anti-diagonal (16 layers x 1152 rows): `torch.bmm`,
   `torch._grouped_mm` and 16 separate `F.linear` calls (triton's do_bench, median).
3. Diagonal ARMT at the largest context with each backend; the faster one is used below.
4. GPU-busy vs wall time of sequential and diagonal ARMT at 32k tokens (torch.profiler).
5. `deploylab armt bench` itself (full attention, sequential, diagonal) at the contexts given.
Everything printed also lands in DIR/armt_gpu.log; the bench rows in DIR/armt_bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deploylab.armt.config import ARMTConfig
from deploylab.armt.diagonal import run_diagonal
from deploylab.armt.model import random_armt
from deploylab.armt.sequential import run_sequential
from deploylab.engine.models.presets import get_preset

RESULTS: dict[str, Any] = {}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(backends: list[str]) -> None:
    print("\n== 1. diagonal vs sequential ==", flush=True)
    cfg = ARMTConfig(segment_size=1024, num_mem_tokens=128, w_mv_init="normal")
    llama = get_preset("llama-3.2-1b")
    cases = [
        ("bf16, 16 layers", llama, torch.bfloat16),
        ("fp32, 4 layers", llama.with_updates(num_hidden_layers=4), torch.float32),
    ]
    for name, shape, dtype in cases:
        model = random_armt(shape, cfg, dtype=dtype, device="cuda")
        ids = torch.randint(0, shape.vocab_size, (1, 5 * 1024 + 300), device="cuda")
        seq = run_sequential(model, ids)
        assert seq.hidden is not None
        for backend in backends:
            diag = run_diagonal(model, ids, backend=backend)
            assert diag.hidden is not None
            row = {
                "hidden_rel_err": rel(diag.hidden, seq.hidden),
                "w_mem_rel_err": rel(diag.memory.w_mem, seq.memory.w_mem),
                "z_rel_err": rel(diag.memory.z, seq.memory.z),
                "w_mem_norm": float(seq.memory.w_mem.norm()),
                "next_token_equal": bool(
                    model.compute_logits(diag.last_hidden).argmax()
                    == model.compute_logits(seq.last_hidden).argmax()
                ),
            }
            RESULTS[f"check {name} {backend}"] = row
            print(
                f"{name:<16} {backend:<10} "
                + ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )
        del model
        torch.cuda.empty_cache()


def bench_gemms(backends: list[str]) -> None:
    print("\n== 2. grouped GEMMs of one full anti-diagonal (G=16, 1152 rows) ==", flush=True)
    from triton.testing import do_bench

    shapes = {
        "qkv": (3072, 2048),
        "o": (2048, 2048),
        "gate_up": (16384, 2048),
        "down": (2048, 8192),
    }
    totals: dict[str, float] = {}
    for name, (o, k) in shapes.items():
        x = torch.randn(16, 1152, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(16, o, k, device="cuda", dtype=torch.bfloat16) * 0.02
        flops = 2 * 16 * 1152 * o * k
        fns: dict[str, Callable[[], object]] = {
            "bmm": lambda x=x, w=w: torch.bmm(x, w.mT),
            "16x linear": lambda x=x, w=w: [F.linear(x[i], w[i]) for i in range(16)],
        }
        if "grouped_mm" in backends:
            fns["grouped_mm"] = lambda x=x, w=w: torch._grouped_mm(x, w.mT)
        for label, fn in fns.items():
            ms = float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
            totals[label] = totals.get(label, 0.0) + ms
            print(
                f"{name:<8} {label:<11} {ms:7.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True
            )
    RESULTS["gemm_ms_per_step"] = totals
    print("sum per step: " + ", ".join(f"{k} {v:.3f} ms" for k, v in totals.items()))


def timed(fn: Callable[[], object], reps: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pick_backend(backends: list[str], context: int) -> str:
    print(f"\n== 3. diagonal ARMT backends at {context:,} tokens ==", flush=True)
    cfg = ARMTConfig(segment_size=1024, num_mem_tokens=128, w_mv_init="normal")
    model = random_armt("llama-3.2-1b", cfg, dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(0, model.llama_config.vocab_size, (1, context), device="cuda")
    best, best_t = "bmm", float("inf")
    for backend in backends:
        try:
            t = timed(lambda m=model, b=backend: run_diagonal(m, ids, keep_hidden=False, backend=b))
        except Exception as exc:  # report and go on with the other backend
            print(f"{backend}: failed: {exc!r}", flush=True)
            continue
        RESULTS[f"diagonal {backend} s"] = t
        print(f"{backend:<11} {t:.3f} s", flush=True)
        if t < best_t:
            best, best_t = backend, t
    profile(model, best)
    del model
    torch.cuda.empty_cache()
    return best


def profile(model: Any, backend: str, context: int = 32768) -> None:
    print(f"\n== 4. GPU-busy vs wall time at {context:,} tokens ==", flush=True)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ids = torch.randint(0, model.llama_config.vocab_size, (1, context), device="cuda")
    runs = {
        "sequential": lambda: run_sequential(model, ids, keep_hidden=False),
        "diagonal": lambda: run_diagonal(model, ids, keep_hidden=False, backend=backend),
    }
    for name, fn in runs.items():
        try:
            fn()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            # Kernel rows only (their device_type is CUDA); aten rows would count twice.
            events = [e for e in prof.key_averages() if str(e.device_type).endswith("CUDA")]
            busy = sum(e.self_device_time_total for e in events) / 1e6
            kernels = sum(e.count for e in events)
            top = sorted(events, key=lambda e: -e.self_device_time_total)[:8]
            RESULTS[f"profile {name}"] = {"wall_s": wall, "gpu_busy_s": busy}
            print(
                f"{name}: wall {wall:.3f} s (profiled), GPU busy {busy:.3f} s, "
                f"~{kernels} kernel launches",
                flush=True,
            )
            for e in top:
                print(f"    {e.self_device_time_total / 1e3:8.1f} ms  {e.key[:90]}")
        except Exception as exc:  # the profiler is a nice-to-have here
            print(f"{name}: profiler failed: {exc!r}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--context", default="8192,32768,131072")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
        f"grouped_mm: {hasattr(torch, '_grouped_mm')}",
        flush=True,
    )
    backends = ["bmm"] + (["grouped_mm"] if hasattr(torch, "_grouped_mm") else [])
    check(backends)
    bench_gemms(backends)
    largest = max(int(c) for c in args.context.split(","))
    backend = pick_backend(backends, largest)
    print(f"\n== 5. deploylab armt bench (grouped backend: {backend}) ==", flush=True)
    from deploylab.cli import main as cli_main

    code = cli_main(
        [
            "armt",
            "bench",
            "--model-shape",
            "llama-3.2-1b",
            "--context",
            args.context,
            "--segment",
            "1024",
            "--memory-tokens",
            "128",
            "--device",
            "cuda",
            "--dtype",
            "bfloat16",
            "--grouped-backend",
            backend,
            "--output",
            str(args.out / "armt_bench.json"),
        ]
    )
    (args.out / "armt_gpu.json").write_text(json.dumps(RESULTS, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())

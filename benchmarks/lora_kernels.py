"""The decode-step LoRA kernels alone, per projection group of a model shape: the two-launch
paths (`fused`, `split`) against the one-pass kernel over a grid of launch shapes, each timed
as a captured CUDA graph of repeated calls (how a decode step replays them), beside the
group's base matmul. Writes the best one-pass shape per group for `ONEPASS_SHAPES`.

    PYTHONPATH=src python benchmarks/lora_kernels.py --out lora_kernels.json \\
        --shapes-out onepass_shapes.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from deploylab.engine.lora import triton_ops
from deploylab.engine.lora.triton_ops import LoraKernels, OnepassShape
from deploylab.engine.models.presets import get_preset


def groups_of(shape: str) -> list[tuple[str, int, list[int]]]:
    """(name, input width, output widths) of each LoRA projection group of a preset."""
    c = get_preset(shape)
    head = c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head, c.num_key_value_heads * head
    return [
        ("qkv", c.hidden_size, [q, kv, kv]),
        ("o", q, [c.hidden_size]),
        ("gate_up", c.hidden_size, [c.intermediate_size, c.intermediate_size]),
        ("down", c.intermediate_size, [c.hidden_size]),
    ]


def graph_us(fn: Any, calls: int, replays: int = 20) -> float:
    """Microseconds per call of `fn` captured `calls` times in one CUDA graph (median of
    `replays` replays, device clock)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def candidate_shapes(k: int, n: int) -> list[OnepassShape]:
    """The one-pass launch shapes tried for a group (rows 1, and 2-4 rows sorted by slot)."""
    block_ks = (128, 256) if k <= 4096 else (256, 512)
    out = [
        OnepassShape(bk, bn, cols, 1, 4)
        for bk, bn, cols in itertools.product(block_ks, (64, 128), (256, 1024, 4096))
        if cols <= max(n, 256)
    ]
    out += [
        OnepassShape(block_ks[0], bn, cols, rows, 4)
        for bn, cols, rows in itertools.product((32, 64), (1024, 8192), (2, 4))
        if cols <= max(n, 1024)
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--rows", type=int, default=64, help="decode rows of the step")
    p.add_argument("--adapters", type=int, default=16, help="rows cycle over this many slots")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--calls", type=int, default=32, help="calls per captured graph")
    p.add_argument("--budget-s", type=float, default=240, help="stop trying shapes after")
    p.add_argument("--out", type=Path)
    p.add_argument("--shapes-out", type=Path, help="best one-pass shape per group (JSON)")
    args = p.parse_args(argv)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    slots = [i % args.adapters for i in range(args.rows)]  # the benchmark's cyclic traffic
    deadline = time.perf_counter() + args.budget_s
    results: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    for name, k, widths in groups_of(args.shape):
        x = torch.randn(args.rows, k, device=dev, dtype=dtype, generator=gen)
        y = torch.zeros(args.rows, sum(widths), device=dev, dtype=dtype)
        w = torch.randn(sum(widths), k, device=dev, dtype=dtype, generator=gen) * 0.01
        a = [torch.randn(args.adapters, args.rank, k, device=dev, dtype=dtype, generator=gen)
             for _ in widths]  # fmt: skip
        b = [torch.randn(args.adapters, n, args.rank, device=dev, dtype=dtype, generator=gen)
             for n in widths]  # fmt: skip
        row: dict[str, Any] = {"group": name, "k": k, "widths": widths}
        for mode in ("fused", "split"):
            plan = LoraKernels(mode).plan(slots, [], args.rank, dev)
            row[f"{mode}_us"] = graph_us(partial(plan.apply, x, y, a, b, widths), args.calls)
        base = partial(torch.matmul, x, w.T)
        row["base_matmul_us"] = graph_us(base, args.calls)
        for mode in ("fused", "overlap"):
            plan = LoraKernels(mode).plan(slots, [], args.rank, dev)
            row[f"base_plus_{mode}_us"] = graph_us(
                partial(plan.apply, x, base, a, b, widths), args.calls
            )
        reference = y.clone().zero_()
        LoraKernels("fused").plan(slots, [], args.rank, dev).apply(x, reference, a, b, widths)
        tried = []
        for shape in candidate_shapes(k, max(widths)):
            if time.perf_counter() > deadline:
                tried.append({"shape": vars(shape), "error": "skipped: --budget-s spent"})
                continue
            triton_ops.ONEPASS_SHAPES[(k, max(widths))] = shape
            plan = LoraKernels("onepass").plan(slots, [], args.rank, dev)
            try:
                got = y.clone().zero_()
                plan.apply(x, got, a, b, widths)
                err = (got.float() - reference.float()).abs().max().item()
                us = graph_us(partial(plan.apply, x, y, a, b, widths), args.calls)
            except Exception as exc:  # noqa: BLE001 - a shape that fails to compile is skipped
                tried.append({"shape": vars(shape), "error": repr(exc)[:200]})
                continue
            tried.append({"shape": vars(shape), "us": us, "max_err": err})
            print(f"  {name} {shape}: {us:.1f} us (max err {err:.3g})", flush=True)
        triton_ops.ONEPASS_SHAPES.pop((k, max(widths)), None)
        ok = [t for t in tried if "us" in t]
        row["onepass"] = sorted(ok, key=lambda t: t["us"])[:8]
        row["onepass_errors"] = [t for t in tried if "error" in t][:3]
        if ok:
            top = min(ok, key=lambda t: t["us"])
            best[f"{k}x{max(widths)}"] = top["shape"]
            row["onepass_best_us"] = top["us"]
            triton_ops.ONEPASS_SHAPES[(k, max(widths))] = OnepassShape(**top["shape"])
            plan = LoraKernels("onepass").plan(slots, [], args.rank, dev)
            row["base_plus_onepass_us"] = graph_us(
                partial(plan.apply, x, base, a, b, widths), args.calls
            )
            triton_ops.ONEPASS_SHAPES.pop((k, max(widths)))
        nan = float("nan")
        print(
            f"{name:8s} K={k:5d} N={widths}: base matmul {row['base_matmul_us']:.1f} us; LoRA "
            f"alone: fused {row['fused_us']:.1f}, split {row['split_us']:.1f}, one-pass best "
            f"{row.get('onepass_best_us', nan):.1f} {best.get(f'{k}x{max(widths)}')}; base + "
            f"LoRA: fused {row['base_plus_fused_us']:.1f}, overlap "
            f"{row['base_plus_overlap_us']:.1f}, "
            f"one-pass {row.get('base_plus_onepass_us', nan):.1f}",
            flush=True,
        )
        results.append(row)
    if args.out:
        device = torch.cuda.get_device_name(dev)
        args.out.write_text(json.dumps({"device": device, "args": vars(args) | {
            "out": str(args.out), "shapes_out": str(args.shapes_out)}, "groups": results},
            indent=1))  # fmt: skip
    if args.shapes_out:
        args.shapes_out.write_text(json.dumps(best, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

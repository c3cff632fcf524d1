"""The decode-step LoRA kernels, per projection group of a model shape: each decode mode
(`split`, `fused`, `tiles` of 2/4/8 rows sorted by slot; the shrink beside the base GEMM on
a side stream or not), timed alone and together with the group's base matmul, each as a
captured CUDA graph of repeated calls (how a decode step replays them).

    PYTHONPATH=src python benchmarks/lora_kernels.py --out lora_kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from attention_variants import bench_graph  # noqa: E402
from deploylab.engine.lora import triton_ops
from deploylab.engine.lora.triton_ops import LoraKernels
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


def graph_us(fn: Any, calls: int) -> float:
    """Microseconds per call of `fn` captured `calls` times in one CUDA graph."""
    return bench_graph(fn, calls) * 1e3


VARIANTS = [("fused", 1, False), ("fused", 1, True), ("tiles", 4, False)] + [
    ("tiles", t, True) for t in (2, 4, 8)
]
DEFAULT_TILE_ROWS = triton_ops.TILE_ROWS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--rows", type=int, default=64, help="decode rows of the step")
    p.add_argument("--adapters", type=int, default=16, help="rows cycle over this many slots")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--calls", type=int, default=32, help="calls per captured graph")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    slots = [i % args.adapters for i in range(args.rows)]  # the benchmark's cyclic traffic
    results: list[dict[str, Any]] = []
    for name, k, widths in groups_of(args.shape):
        x = torch.randn(args.rows, k, device=dev, dtype=dtype, generator=gen)
        y = torch.zeros(args.rows, sum(widths), device=dev, dtype=dtype)
        w = torch.randn(sum(widths), k, device=dev, dtype=dtype, generator=gen) * 0.01
        a = [torch.randn(args.adapters, args.rank, k, device=dev, dtype=dtype, generator=gen)
             for _ in widths]  # fmt: skip
        b = [torch.randn(args.adapters, n, args.rank, device=dev, dtype=dtype, generator=gen)
             for n in widths]  # fmt: skip
        row: dict[str, Any] = {"group": name, "k": k, "widths": widths}
        base = partial(torch.matmul, x, w.T)
        row["base_matmul_us"] = graph_us(base, args.calls)
        reference = y.clone().zero_()
        LoraKernels("split").plan(slots, [], args.rank, dev).apply(x, reference, a, b, widths)
        for mode, tile_rows, overlap in VARIANTS:
            triton_ops.TILE_ROWS = tile_rows
            plan = LoraKernels(mode, overlap=overlap).plan(slots, [], args.rank, dev)
            got = plan.apply(x, y.clone().zero_(), a, b, widths)
            tag = f"{mode}{tile_rows if mode == 'tiles' else ''}{'+overlap' if overlap else ''}"
            row[f"{tag}_max_err"] = (got.float() - reference.float()).abs().max().item()
            row[f"{tag}_us"] = graph_us(partial(plan.apply, x, y, a, b, widths), args.calls)
            row[f"base+{tag}_us"] = graph_us(partial(plan.apply, x, base, a, b, widths), args.calls)
            print(f"  {name}: {tag}: LoRA alone {row[f'{tag}_us']:.1f} us, base + LoRA "
                  f"{row[f'base+{tag}_us']:.1f} us (base alone {row['base_matmul_us']:.1f})",
                  flush=True)  # fmt: skip
        triton_ops.TILE_ROWS = DEFAULT_TILE_ROWS
        results.append(row)
    if args.out:
        device = torch.cuda.get_device_name(dev)
        args.out.write_text(json.dumps({"device": device, "args": vars(args) | {
            "out": str(args.out)}, "groups": results},
            indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

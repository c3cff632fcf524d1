"""Paged decode and prefill attention variants on CUDA, timed against each other.

Decode (one query token per sequence, keys/values in the paged cache, blocks scattered):
  - triton-split: deploylab's Triton kernel (splits the context when the batch is small)
  - triton-nosplit: the same kernel with one program per (sequence, KV head)
  - flex: FlexAttention with a block mask built from the block table (the cache as one
    physical sequence, each sequence's KV blocks listed from its table)
  - gather+sdpa: gather each sequence's blocks into a padded buffer, then SDPA with a mask
Prefill (one causal sequence): SDPA with each backend forced, compiled FlexAttention, and
deploylab's Triton prefill kernel (one row per tile shape) reading the paged cache
("paged-") or the step's contiguous fresh keys/values ("fresh-").
Decode times are per call inside a CUDA graph of 16 calls (how the engine runs decode
steps); `eager_ms` is the same call launched from Python.

    python benchmarks/attention_variants.py --batch-sizes 1,64,256 --context 1024
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="llama-3.2-1b", help="random-weight preset for head sizes")
    p.add_argument("--batch-sizes", default="1,64,256")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--prefill-tokens", type=int, default=4096)
    p.add_argument(
        "--variants", default="triton,sdpa,flex", help="comma list of: triton, sdpa, flex"
    )
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def bench(fn: Callable[[], Any]) -> float:
    """Median milliseconds of `fn` (CUDA events, after warm-up)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def bench_graph(fn: Callable[[], Any], calls: int = 16) -> float:
    """Median milliseconds per call with `calls` calls captured in one CUDA graph (as the
    engine's decode steps run: no launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return bench(graph.replay) / calls


def make_cache(
    batch: int, context: int, kvh: int, dim: int, bs: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches with each sequence's blocks at random physical places."""
    width = -(-context // bs)
    num_blocks = batch * width + 1
    k = torch.randn(kvh, num_blocks, bs, dim, generator=gen).cuda().bfloat16()
    v = torch.randn(kvh, num_blocks, bs, dim, generator=gen).cuda().bfloat16()
    tables = torch.randperm(num_blocks - 1, generator=gen)[: batch * width].view(batch, width)
    lens = torch.full((batch,), context, dtype=torch.int32)
    return k, v, tables.int().cuda(), lens.cuda()


def gather_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor
) -> torch.Tensor:
    """The gather + SDPA fallback in bf16."""
    kvh, _, bs, dim = k.shape
    batch, heads, _ = q.shape
    length = tables.shape[1] * bs
    idx = tables.long()
    kb = k[:, idx].permute(1, 0, 2, 3, 4).reshape(batch, kvh, length, dim)
    vb = v[:, idx].permute(1, 0, 2, 3, 4).reshape(batch, kvh, length, dim)
    mask = torch.arange(length, device=q.device)[None, :] < lens[:, None]
    out = F.scaled_dot_product_attention(
        q.view(batch, kvh, heads // kvh, dim), kb, vb, attn_mask=mask[:, None, None, :]
    )
    return out.reshape(batch, heads, dim)


def flex_decode(
    k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor, heads: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """FlexAttention over the physical cache; the block mask lists each sequence's blocks.

    Returns a function of q `[B, H, d]`; the mask is built once (as an engine would per step,
    shared by all layers) and its build time is reported separately."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    kvh, num_blocks, bs, dim = k.shape
    batch, width = tables.shape
    kf = k.view(1, kvh, num_blocks * bs, dim)
    vf = v.view(1, kvh, num_blocks * bs, dim)
    # Physical block -> logical block, per sequence (for the partial last block's mask).
    logical = torch.zeros(batch, num_blocks, dtype=torch.int32, device=k.device)
    rows = torch.arange(batch, device=k.device)[:, None].expand(batch, width)
    cols = torch.arange(width, device=k.device, dtype=torch.int32)[None, :].expand(batch, width)
    logical[rows, tables.long()] = cols

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        pos = logical[b, kv_idx // bs] * bs + kv_idx % bs
        return pos < lens[b]

    used = (lens + bs - 1) // bs
    # The KV-block axis of the mask is the whole physical cache; a row lists its blocks first.
    indices = torch.zeros(batch, 1, 1, num_blocks, dtype=torch.int32, device=k.device)
    indices[:, 0, 0, :width] = tables
    block_mask = BlockMask.from_kv_blocks(
        used.view(batch, 1, 1).int(),
        indices,
        BLOCK_SIZE=(128, bs),
        mask_mod=mask_mod,
        seq_lengths=(1, num_blocks * bs),
    )
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q: torch.Tensor) -> torch.Tensor:
        out = compiled(q.view(batch, heads, 1, dim), kf, vf, block_mask=block_mask, enable_gqa=True)
        return out.view(batch, heads, dim)

    return run


def decode_batch(
    batch: int, args: argparse.Namespace, cfg: Any, kernels: dict[str, Any], gen: torch.Generator
) -> list[dict[str, Any]]:
    """Every decode variant at one batch size."""
    from deploylab.engine.triton_attention import reference_decode

    heads, kvh, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    scale = dim**-0.5
    k, v, tables, lens = make_cache(batch, args.context, kvh, dim, args.block_size, gen)
    q = torch.randn(batch, heads, dim, generator=gen).cuda().bfloat16()
    kv_bytes = 2 * batch * args.context * kvh * dim * 2
    ref = reference_decode(q, k, v, tables, lens, scale).float()
    wanted = args.variants.split(",")
    variants: dict[str, Callable[[], torch.Tensor]] = {}
    if "triton" in wanted:
        for name, fn in kernels.items():
            variants[name] = lambda fn=fn: fn(q, k, v, tables, lens, scale)
    if "sdpa" in wanted:
        variants["gather+sdpa"] = lambda: gather_sdpa(q, k, v, tables, lens)
    if "flex" in wanted:
        try:
            flex = flex_decode(k, v, tables, lens, heads)
            variants["flex"] = lambda: flex(q)
        except Exception as exc:  # report, keep measuring the others
            print(f"flex decode unavailable at batch {batch}: {exc!r:.300}", flush=True)
    rows = []
    for name, fn in variants.items():
        try:
            err = ((fn().float() - ref).norm() / ref.norm()).item()
            eager_ms = bench(fn)
            ms = bench_graph(fn) if name != "flex" else eager_ms
        except Exception as exc:
            print(f"{name} failed at batch {batch}: {exc!r:.300}", flush=True)
            continue
        row = dict(
            kind="decode", variant=name, batch=batch, context=args.context, ms=ms,
            eager_ms=eager_ms, gbs=kv_bytes / ms / 1e6, rel_err=err,
        )  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    return rows


def decode_rows(args: argparse.Namespace, cfg: Any) -> list[dict[str, Any]]:
    from deploylab.engine.triton_attention import _build

    gen = torch.Generator().manual_seed(0)
    kernels = {"triton-split": _build(), "triton-nosplit": _build(target_programs=1)}
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        rows += decode_batch(batch, args, cfg, kernels, gen)
        torch.cuda.empty_cache()
    return rows


# Tile shapes tried for the Triton prefill kernel: (block_m, block_n, warps, stages).
PREFILL_TILES = [(64, 128, 4, 3), (64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 2),
                 (64, 128, 8, 3), (128, 128, 4, 3), (64, 64, 4, 2), (128, 64, 4, 2)]  # fmt: skip


def triton_prefill_variants(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, gen: torch.Generator
) -> dict[str, Callable[[], torch.Tensor]]:
    """deploylab's Triton prefill kernel over a paged cache (blocks shuffled), per tile."""
    from deploylab.engine.triton_prefill import PrefillBatch, TileConfig, _build

    _, kvh, n, dim = k.shape
    width = -(-n // block_size)
    table = torch.randperm(width, generator=gen)
    k_cache = torch.zeros(kvh, width, block_size, dim, dtype=k.dtype, device=k.device)
    v_cache = torch.zeros_like(k_cache)
    pad = width * block_size - n
    k_cache[:, table.cuda()] = F.pad(k[0], (0, 0, 0, pad)).view(kvh, width, block_size, dim)
    v_cache[:, table.cuda()] = F.pad(v[0], (0, 0, 0, pad)).view(kvh, width, block_size, dim)
    batch = PrefillBatch(torch.tensor([[0], [n], [n]], device="cuda"), table.view(1, -1).cuda(), n)
    qt = q[0].transpose(0, 1).contiguous()
    out = torch.empty_like(qt)
    variants = {}
    fresh = (k[0].transpose(0, 1).contiguous(), v[0].transpose(0, 1).contiguous())
    for bm, bn, warps, stages in PREFILL_TILES:
        fn = _build(TileConfig(bm, bn, warps, stages))
        for mode, kv in (("paged", None), ("fresh", fresh)):

            def run(fn: Any = fn, kv: Any = kv) -> torch.Tensor:
                fn(qt, k_cache, v_cache, batch, dim**-0.5, out, kv)
                return out.transpose(0, 1).unsqueeze(0)

            variants[f"{mode}-{bm}x{bn}w{warps}s{stages}"] = run
    return variants


def prefill_rows(args: argparse.Namespace, cfg: Any) -> list[dict[str, Any]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, heads, kvh = args.prefill_tokens, cfg.num_attention_heads, cfg.num_key_value_heads
    dim = cfg.head_dim
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, heads, n, dim, generator=gen).cuda().bfloat16()
    k = torch.randn(1, kvh, n, dim, generator=gen).cuda().bfloat16()
    v = torch.randn(1, kvh, n, dim, generator=gen).cuda().bfloat16()
    flops = 2 * 2 * heads * dim * n * (n + 1) // 2
    ref = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True
    )

    def sdpa(backend: Any) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        return fn

    wanted = args.variants.split(",")
    variants: dict[str, Callable[[], torch.Tensor]] = {}
    if "sdpa" in wanted:
        variants["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
        variants["sdpa-cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
        variants["sdpa-efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    if "flex" in wanted:
        causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device="cuda")
        compiled = torch.compile(flex_attention, dynamic=False)
        variants["flex"] = lambda: compiled(q, k, v, block_mask=causal, enable_gqa=True)
    if "triton" in wanted:
        variants.update(triton_prefill_variants(q, k, v, args.block_size, gen))
    rows = []
    for name, fn in variants.items():
        try:
            err = ((fn().float() - ref).norm() / ref.norm()).item()
            ms = bench(fn)
        except Exception as exc:
            print(f"{name} failed: {exc!r:.300}", flush=True)
            continue
        row = dict(
            kind="prefill", variant=name, tokens=n, ms=ms, tflops=flops / ms / 1e9, rel_err=err
        )
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("This benchmark needs a CUDA GPU (none is visible to PyTorch).", file=sys.stderr)
        return 2
    from deploylab.engine.models.presets import get_preset

    cfg = get_preset(args.shape)
    rows = decode_rows(args, cfg) + prefill_rows(args, cfg)
    print(f"\n{torch.cuda.get_device_name()}  {args.shape}  block {args.block_size}")
    print(f"{'kind':<8}{'variant':<22}{'batch':>6}{'ms':>10}{'GB/s | TFLOP/s':>17}{'rel err':>10}")
    for r in rows:
        rate = r.get("gbs", r.get("tflops"))
        batch = r.get("batch", 1)
        print(
            f"{r['kind']:<8}{r['variant']:<22}{batch:>6}{r['ms']:>10.4f}{rate:>17.1f}"
            f"{r['rel_err']:>10.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

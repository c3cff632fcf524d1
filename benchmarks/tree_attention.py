"""Tree attention on CUDA: the DeFT-style tree kernel against the plain paged decode kernel
and FlexAttention, for W branches that share a P-token prefix (Llama-3.2-1B head shape:
32 query heads, 8 KV heads, head_dim 64, bf16, 16-token blocks scattered in the cache).

Each branch has its own suffix of `--suffix` tokens after the prefix (the tokens it has
generated). Attention times are per call inside a CUDA graph (as the engine runs decode
steps); the plan's host build time is reported beside them.

- plain: the engine's paged decode kernel, each branch reading the whole prefix;
- tree: the tree kernel with the KV-guided plan (prefix read once per group of branches);
- flex: FlexAttention, the W branch queries as one query sequence over [prefix; suffixes]
  with a mask_mod (prefix visible to all, each suffix to its own branch), compiled.

With `--verify`, token-tree verification (multi-draft speculation): B sequences, each a tree
of N draft nodes after a C-token context, attended by the tree kernel with tail masks
(`spec_decode/tree_verify.py`) against the masked-SDPA verify path the engine used before
(`spec_decode/verify_attention.py`), both eager, as the engine runs verify steps.

With `--e2e`, also the engine end to end: `n` samples of one long prompt, decode throughput
with tree attention on and off (random weights, see --shape).

    python benchmarks/tree_attention.py --widths 4,16,64 --prefixes 4096,16384,32768 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_variants import bench, bench_graph  # noqa: E402
from deploylab.engine.tree_attention import build_tree_plan  # noqa: E402
from deploylab.engine.triton_attention import load_paged_decode  # noqa: E402
from deploylab.engine.triton_tree import TreeDecoder, to_device, tree_decode  # noqa: E402

HEADS, KV_HEADS, DIM, BS = 32, 8, 64, 16
SMS = 132


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", default="4,16,64")
    p.add_argument("--prefixes", default="4096,16384,32768")
    p.add_argument("--suffix", type=int, default=64, help="own tokens per branch")
    p.add_argument("--crossover", action="store_true", help="also short prefixes / small widths")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--verify", action="store_true", help="token-tree verify: kernel vs SDPA")
    p.add_argument("--verify-nodes", default="16,64")
    p.add_argument("--verify-contexts", default="1024,4096,16384")
    p.add_argument("--verify-batches", default="1,8")
    p.add_argument("--e2e", action="store_true", help="engine n-sample decode, tree on vs off")
    p.add_argument("--e2e-prompt", type=int, default=16384)
    p.add_argument("--e2e-n", type=int, default=16)
    p.add_argument("--e2e-tokens", type=int, default=128)
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def make_tree(width: int, prefix: int, suffix: int, gen: torch.Generator) -> dict[str, Any]:
    """Caches and block tables of W branches forked from one prefix (copy-on-write of the
    prefix's partial last block, as the engine forks)."""
    pre_blocks = prefix // BS
    own_blocks = -(-(prefix % BS + suffix) // BS)
    total = pre_blocks + width * own_blocks + 1
    k = torch.randn(KV_HEADS, total, BS, DIM, generator=gen).cuda().bfloat16()
    v = torch.randn(KV_HEADS, total, BS, DIM, generator=gen).cuda().bfloat16()
    perm = torch.randperm(total - 1, generator=gen).tolist()
    shared = perm[:pre_blocks]
    tables = [shared + perm[pre_blocks + i * own_blocks : pre_blocks + (i + 1) * own_blocks]
              for i in range(width)]  # fmt: skip
    lens = [prefix + suffix] * width
    return {"k": k, "v": v, "tables": tables, "lens": lens}


def flex_tree(k_dense: torch.Tensor, v_dense: torch.Tensor, width: int, prefix: int, suffix: int):  # type: ignore[no-untyped-def]
    """FlexAttention for the tree as a dense [prefix; suffix_1 .. suffix_W] layout."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        own = (kv_idx - prefix) // suffix
        return (kv_idx < prefix) | (own == q_idx)

    kv_len = prefix + width * suffix
    mask = create_block_mask(mask_mod, 1, None, width, kv_len, device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    # Short query sequences take flex's decoding kernel, which finds no config for some GQA
    # shapes in PyTorch 2.11; then the general kernel is forced.
    options: dict[str, Any] = {}

    def run(q: torch.Tensor) -> torch.Tensor:
        return compiled(
            q, k_dense, v_dense, block_mask=mask, enable_gqa=True, kernel_options=options
        )

    try:
        run(torch.zeros(1, HEADS, width, DIM, device="cuda", dtype=k_dense.dtype))
    except Exception:
        options["FORCE_USE_FLEX_ATTENTION"] = True
    return run


def kernel_case(width: int, prefix: int, args: argparse.Namespace, plain: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(width * 7 + prefix)
    t = make_tree(width, prefix, args.suffix, gen)
    k, v, tables, lens = t["k"], t["v"], t["tables"], t["lens"]
    q = torch.randn(width, HEADS, DIM, generator=gen).cuda().bfloat16()
    w = max(len(x) for x in tables)
    tab = torch.tensor([x + [0] * (w - len(x)) for x in tables], dtype=torch.int32).cuda()
    lens_t = torch.tensor(lens, dtype=torch.int32).cuda()
    t0 = time.perf_counter()
    dec = TreeDecoder(HEADS, KV_HEADS, BS, min_savings=0.0, programs=2 * SMS)
    plan = dec.plan(tables, lens) or build_tree_plan(
        tables, lens, BS, max_rows_per_task=dec.rows_per_task
    )
    build_ms = (time.perf_counter() - t0) * 1e3
    dplan = to_device(plan, q.device)
    scale = DIM**-0.5
    ref = plain(q, k, v, tab, lens_t, scale)
    got = tree_decode(q, k, v, dplan, scale)
    err = float((got.float() - ref.float()).abs().max())
    row: dict[str, Any] = {
        "width": width,
        "prefix": prefix,
        "suffix": args.suffix,
        "plain_ms": bench_graph(lambda: plain(q, k, v, tab, lens_t, scale)),
        "tree_ms": bench_graph(lambda: tree_decode(q, k, v, dplan, scale)),
        "plan_build_ms": build_ms,
        "plan_savings": plan.savings,
        "max_abs_diff_vs_plain": err,
    }
    if not args.no_flex and prefix:
        try:
            _flex_case(row, q, k, v, tables, width, prefix, args, ref)
        except Exception as exc:  # a compile failure loses only this column
            row["flex_error"] = repr(exc)[:300]
    row["speedup_vs_plain"] = row["plain_ms"] / row["tree_ms"]
    print(json.dumps(row), flush=True)
    return row


def _flex_case(row, q, k, v, tables, width, prefix, args, ref):  # type: ignore[no-untyped-def]
    """FlexAttention's time and agreement for one case, into `row`."""
    kd = [k[:, tables[0][: prefix // BS]].reshape(KV_HEADS, -1, DIM)[:, :prefix]]
    vd = [v[:, tables[0][: prefix // BS]].reshape(KV_HEADS, -1, DIM)[:, :prefix]]
    for i in range(width):  # each branch's own tokens, after the shared whole blocks
        own = torch.tensor(tables[i][prefix // BS :], device="cuda")
        s0 = prefix % BS
        kd.append(k[:, own].reshape(KV_HEADS, -1, DIM)[:, s0 : s0 + args.suffix])
        vd.append(v[:, own].reshape(KV_HEADS, -1, DIM)[:, s0 : s0 + args.suffix])
    k_dense = torch.cat(kd, 1)[None].contiguous()
    v_dense = torch.cat(vd, 1)[None].contiguous()
    run = flex_tree(k_dense, v_dense, width, prefix - prefix % BS, args.suffix + prefix % BS)
    qf = q.transpose(0, 1)[None].contiguous()  # [1, H, W, d]
    out = run(qf)
    row["flex_max_abs_diff_vs_plain"] = float(
        (out[0].transpose(0, 1).float() - ref.float()).abs().max()
    )
    row["flex_ms"] = bench_graph(lambda: run(qf))


def verify_case(nodes: int, context: int, batch: int) -> dict[str, Any]:
    """Attention time of B token-tree verify chunks (N nodes after C cached tokens each):
    tree kernel vs masked SDPA, and their largest difference."""
    from deploylab.engine.spec_decode.tree_verify import build_tree_verify
    from deploylab.engine.spec_decode.verify_attention import build_verify_batch

    rng = random.Random(nodes * 31 + context + batch)
    gen = torch.Generator().manual_seed(nodes + context + batch)
    per_seq = -(-(context + nodes) // BS)
    nb = batch * per_seq + 1
    k = torch.randn(KV_HEADS, nb, BS, DIM, generator=gen).cuda().bfloat16()
    v = torch.randn(KV_HEADS, nb, BS, DIM, generator=gen).cuda().bfloat16()
    free = list(range(1, nb))
    rng.shuffle(free)
    items, start = [], 0
    for _ in range(batch):
        parents = [rng.randrange(-1, i) for i in range(nodes - 1)]
        table = [free.pop() for _ in range(per_seq)]
        items.append((start, nodes, context, table, parents))
        start += nodes
    q = torch.randn(start, HEADS, DIM, generator=gen).cuda().bfloat16()
    head_rows = torch.arange(KV_HEADS, dtype=torch.int64) * nb
    dec = TreeDecoder(HEADS, KV_HEADS, BS, programs=2 * SMS)
    t0 = time.perf_counter()
    tree = build_tree_verify(items, BS, q.device, dec.rows_per_task, dec.target_wide_tasks)
    build_ms = (time.perf_counter() - t0) * 1e3
    sdpa = build_verify_batch(items, head_rows, BS, q.device)
    scale = DIM**-0.5
    out_t, out_s = torch.zeros_like(q), torch.zeros_like(q)
    tree(q, k, v, out_t, scale)
    sdpa(q, k, v, out_s, scale)
    row: dict[str, Any] = {
        "nodes": nodes,
        "context": context,
        "batch": batch,
        "sdpa_ms": bench(lambda: sdpa(q, k, v, out_s, scale)),
        "tree_ms": bench(lambda: tree(q, k, v, out_t, scale)),
        "plan_build_ms": build_ms,
        "max_abs_diff": float((out_t.float() - out_s.float()).abs().max()),
    }
    row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["tree_ms"]
    print(json.dumps(row), flush=True)
    return row


def e2e(args: argparse.Namespace) -> list[dict[str, Any]]:
    """n samples of one long random prompt: decode tokens/s with tree attention on and off."""
    from deploylab.engine.llm import LLM
    from deploylab.engine.sampling_params import SamplingParams

    rows = []
    for tree in (False, True):
        llm = LLM(
            random_weights=args.shape,
            dtype="bfloat16",
            max_model_len=args.e2e_prompt + args.e2e_tokens + 16,
            tree_attention=tree,
            gpu_memory_utilization=0.4,
            max_num_seqs=max(32, args.e2e_n),
        )
        prompt = [random.Random(0).randrange(1000, 30000) for _ in range(args.e2e_prompt)]
        params = SamplingParams(
            n=args.e2e_n, temperature=1.0, seed=0, max_tokens=args.e2e_tokens, ignore_eos=True
        )
        llm.generate([prompt], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        t0 = time.perf_counter()
        llm.generate([prompt], params)
        wall = time.perf_counter() - t0
        stats = llm.llm_engine.stats()
        row = {
            "tree_attention": tree,
            "prompt": args.e2e_prompt,
            "n": args.e2e_n,
            "max_tokens": args.e2e_tokens,
            "wall_s": wall,
            "output_tok_s": args.e2e_n * args.e2e_tokens / wall,
            "tree_steps": stats.num_tree_attention_steps_total,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        del llm
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plain = load_paged_decode(torch.device("cuda"), torch.bfloat16)
    assert plain is not None, "the plain paged kernel did not load"
    cases = [
        (w, p) for p in map(int, args.prefixes.split(",")) for w in map(int, args.widths.split(","))
    ]
    if args.crossover:
        cases += [(w, p) for p in (0, 256, 1024) for w in (2, 4, 16, 64)]
        cases += [(2, p) for p in (4096, 16384)]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "kernel": [],
    }
    for w, p in cases:
        try:
            result["kernel"].append(kernel_case(w, p, args, plain))
        except Exception as exc:
            print(json.dumps({"width": w, "prefix": p, "error": repr(exc)[:500]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.verify:
        result["verify"] = [
            verify_case(n, c, b)
            for b in map(int, args.verify_batches.split(","))
            for c in map(int, args.verify_contexts.split(","))
            for n in map(int, args.verify_nodes.split(","))
        ]
    if args.e2e:
        result["e2e"] = e2e(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

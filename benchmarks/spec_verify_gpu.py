"""Cost of the speculative verify step on a GPU: random Llama-3.2-1B-shape weights (bf16).

One engine (`speculative_config` k = 8, adaptive off), a proposer that drafts k random tokens
for every decoding sequence (all rejected: the pass costs the same whatever is accepted), and
per (batch, k) the mean wall time of `engine.step()` over steady decode steps. k = 0 is the
plain decode step. With CUDA graphs on, a verify step whose rows fit the largest captured
bucket replays the decode graph with k + 1 rows per sequence; every (batch, k) is also
measured with graphs off (eager: the paged-prefill kernel for the verify chunks). Before
timing, one mixed verify batch is run both ways on the same cache and the largest logit
difference and the argmax agreement are reported (the graph path's correctness check). The
start-up cost calibration of the adaptive policy (`spec_decode.cost.calibrate`) is run on the
same runner and its fit reported. Speed-ups are derived from these costs and the acceptance
measured on the CPU with the real model (docs/benchmarks.md), not measured here.

    PYTHONPATH=src python benchmarks/spec_verify_gpu.py --out out/spec/verify_cost.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch


class RandomProposer:
    """Drafts ks[i] uniformly random token ids (a pure cost probe)."""

    free_to_propose = True

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab = vocab
        self.rng = random.Random(seed)

    def propose(self, seqs: Seq[Any], ks: Seq[int]) -> list[list[int]]:
        return [[self.rng.randrange(self.vocab) for _ in range(k)] for k in ks]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(engine: Any, batch: int, k: int, prompt_len: int, warm: int, steps: int) -> float:
    """Mean seconds per engine step with `batch` decoding requests drafting k tokens each."""
    from deploylab.engine import SamplingParams

    params = SamplingParams(
        temperature=0, max_tokens=10_000, ignore_eos=True, num_speculative_tokens=k
    )
    rng = random.Random(batch * 100 + k)
    vocab = engine.model_config.vocab_size
    ids = [f"b{batch}k{k}r{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, [rng.randrange(3, vocab) for _ in range(prompt_len)], params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running) or (
        engine.scheduler.waiting
    ):
        engine.step()  # prefill
    for _ in range(warm):
        engine.step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    for rid in ids:
        engine.abort(rid)
    return dt


def _by_row(seqs: list[Any], logits: torch.Tensor) -> torch.Tensor:
    """`logits` rows ordered by (request, position): the eager path orders decode rows by
    context length, the graph path keeps the batch's order."""
    seen: dict[str, int] = {}
    keys = []
    for seq in seqs:
        seen[seq.request_id] = seen.get(seq.request_id, -1) + 1
        keys.append((seq.request_id, seen[seq.request_id]))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return logits[torch.tensor(order, device=logits.device)]


def check_graph_verify(engine: Any, ks: Seq[int]) -> dict[str, float]:
    """Logits of one batch of verify chunks (ks[i] drafts, context 40 + 23 i) through the
    decode graphs and eagerly, on the same random cache: max |difference|, argmax agreement."""
    from deploylab.engine import SamplingParams
    from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
    from deploylab.engine.sequence import Sequence

    runner = engine.runner
    bs = runner.block_size
    vocab = engine.model_config.vocab_size
    out = SchedulerOutput()
    g = torch.Generator().manual_seed(0)
    first = 0
    for i, k in enumerate(ks):
        ctx = 40 + 23 * i
        ids = torch.randint(3, min(1000, vocab), (ctx + 1 + k,), generator=g).tolist()
        seq = Sequence(f"check{i}", ids, SamplingParams(temperature=0), arrival=i)
        seq.num_computed_tokens, seq.num_draft_tokens = ctx, k
        blocks = -(-len(ids) // bs)
        seq.block_table = list(range(first, first + blocks))
        first += blocks
        out.scheduled.append(ScheduledSeq(seq, 1 + k))
    with torch.inference_mode():
        for k_cache, v_cache in runner.kv_cache.layers:
            k_cache.normal_()
            v_cache.normal_()
        graphs, runner.graphs = runner.graphs, None
        eager = _by_row(*runner.execute(out))
        runner.graphs = graphs
        replay = _by_row(*runner.execute(out))
    sync()
    diff = (eager.float() - replay.float()).abs().max().item()
    agree = (eager.argmax(-1) == replay.argmax(-1)).float().mean().item()
    return {"rows": float(eager.shape[0]), "max_abs_diff": diff, "argmax_agreement": agree}


def main(argv: list[str] | None = None) -> int:
    from deploylab.engine import EngineConfig, LLMEngine
    from deploylab.engine.spec_decode.cost import CostModel, calibrate

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="llama-3.2-1b")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--max-k", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--warm", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--out", default="out/spec/verify_cost.json")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run (e.g. --preset tiny)")
    args = p.parse_args(argv)
    spec = {
        "method": "ngram", "num_speculative_tokens": args.max_k, "adaptive": False,
        "cuda_graph_verify": True,
    }  # fmt: skip
    cuda = args.device == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    results: dict[str, Any] = {"device": name, "args": vars(args), "rows": []}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for graphs in (True, False):
        config = EngineConfig(
            random_weights=args.preset, device=args.device,
            dtype="bfloat16" if cuda else "float32", kv_cache_gib=1.0,
            max_num_seqs=max(args.batch_sizes),
            max_num_batched_tokens=max(args.batch_sizes) * (args.max_k + 1) + args.prompt_len,
            speculative_config=spec, cuda_graphs=graphs, gpu_memory_utilization=0.4,
        )  # fmt: skip
        engine = LLMEngine(config)
        assert engine.spec is not None
        engine.spec.proposer = RandomProposer(engine.model_config.vocab_size)
        if graphs and cuda:
            results["graph_check"] = check_graph_verify(engine, [1, 2, 4, 8, 3, 0])
            print("graph check", results["graph_check"], flush=True)
        if graphs:
            with torch.inference_mode():
                obs = calibrate(
                    engine.runner, engine.block_manager.num_free_blocks, 4, max(args.batch_sizes)
                )
            results["calibration"] = {
                "observations": obs,
                "fit_a_b_c": CostModel(obs).coefficients,
            }
            print("calibration", results["calibration"], flush=True)
        ks = range(args.max_k + 1)
        for batch in args.batch_sizes:
            for k in ks:
                dt = time_steps(engine, batch, k, args.prompt_len, args.warm, args.steps)
                row = {"cuda_graphs": graphs, "batch": batch, "k": k, "step_ms": dt * 1e3}
                results["rows"].append(row)
                print(row, flush=True)
                Path(args.out).write_text(json.dumps(results, indent=1))  # partial results
        del engine
        if cuda:
            torch.cuda.empty_cache()
        else:
            break  # no CUDA graphs on the CPU
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

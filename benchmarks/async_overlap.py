"""Async scheduling on and off in one process, one engine (`engine.overlap` is switched):

1. token identity: the same greedy requests through both step kinds;
2. decode steps at --batch-sizes x --context: the captured graph's replay time (CUDA) against
   the engine step's wall clock, with the step's host time split by phase (schedule, model
   runner, sampling launch, bookkeeping, waiting for the device); --queue extra requests wait
   behind the full batch (the host cost must not grow with them);
3. offline throughput (`offline_throughput.py`'s requests and timing): --sweep sizes with async
   scheduling, --sync-sizes also without, interleaved.

    python benchmarks/async_overlap.py --shape tiny --device cpu --batch-sizes 8 --context 64 \
        --sweep 32 64 --sync-sizes 32 --min-len 8 --max-len 32 --max-num-seqs 16
    python benchmarks/async_overlap.py --device cuda --sweep 256 512 1024 2048 --sync-sizes 256 2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from offline_throughput import StepProfile, make_requests, run_deploylab, sync
from roofline import graph_decode, prefill_steps

PHASES = ("schedule", "runner", "sample", "bookkeeping", "wait")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="llama-3.2-1b", help="random-weight preset")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--engine-steps", type=int, default=30, help="timed decode steps per batch")
    p.add_argument("--queue", type=int, default=0, help="requests waiting behind the batch")
    p.add_argument("--check-tokens", type=int, default=16, help="requests in the identity check")
    p.add_argument("--sweep", type=int, nargs="*", default=[256], help="offline sizes (async)")
    p.add_argument("--sync-sizes", type=int, nargs="*", default=[256], help="also synchronous")
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="CPU KV cache size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


class PhaseTimer:
    """Host seconds per step phase, by wrapping the engine's parts (instance attributes)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.sync_wait = False  # synchronous steps: time the device wait after sampling
        self._wrap(engine.scheduler, "schedule", "schedule")
        self._wrap(engine.runner, "execute", "runner")
        self._wrap(engine, "_append_tokens", "bookkeeping")
        sample = engine.sampler.sample

        def timed_sample(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            tokens = sample(*a, **k)
            t1 = time.perf_counter()
            self.seconds["sample"] += t1 - t0
            if self.sync_wait:
                sync(engine.device)
                self.seconds["wait"] += time.perf_counter() - t1
            return tokens

        engine.sampler.sample = timed_sample

    def _wrap(self, obj: Any, name: str, phase: str) -> None:
        fn: Callable[..., Any] = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[phase] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def snapshot(self) -> dict[str, float]:
        """The seconds so far, with the async stepper's device wait."""
        out = dict(self.seconds)
        overlap = self.engine.overlap
        if overlap is not None:
            out["wait"] += overlap.wait_seconds
        return out


def set_mode(engine: Any, stepper: Any, on: bool, timer: PhaseTimer) -> None:
    """Switch async scheduling (only between runs: nothing may be in flight). The prefix
    cache is emptied: each run computes its prompts (same prompts across runs)."""
    assert not engine.has_unfinished_requests()
    engine.block_manager.evict_cached()
    if engine.overlap is not None:
        engine.overlap.inflight = None
    engine.overlap = stepper if on else None
    timer.sync_wait = not on


def check_tokens(llm: Any, stepper: Any, timer: PhaseTimer, args: argparse.Namespace) -> bool:
    from deploylab.engine import SamplingParams

    engine = llm.llm_engine
    gen = torch.Generator().manual_seed(args.seed)
    vocab = engine.model_config.vocab_size
    prompts = [
        torch.randint(1, vocab, (8 + 5 * i,), generator=gen).tolist()
        for i in range(args.check_tokens)
    ]
    params = [
        SamplingParams(temperature=0, max_tokens=16 + i, ignore_eos=True)
        for i in range(len(prompts))
    ]
    outs = {}
    for on in (False, True):
        set_mode(engine, stepper, on, timer)
        outs[on] = [o.token_ids for o in llm.generate(prompts, params)]
    return outs[False] == outs[True]


def decode_steps(engine: Any, timer: PhaseTimer, batch: int, args: argparse.Namespace) -> dict:
    """Median step ms and mean host ms per phase over timed steps of `batch` decodes."""
    from deploylab.engine import SamplingParams

    steps, context = args.engine_steps, args.context
    vocab = engine.model_config.vocab_size
    ahead = prefill_steps(batch, context, engine.config.max_num_batched_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=steps + ahead + 8, ignore_eos=True)
    gen = torch.Generator().manual_seed(batch)
    for i in range(batch + args.queue):
        prompt = torch.randint(1, vocab, (context - 1,), generator=gen).tolist()
        engine.add_request(f"d{batch}-{i}", prompt, params)
    running = engine.scheduler.running
    while len(running) < batch or any(s.num_computed_tokens < s.num_prompt_tokens for s in running):
        engine.step()
    engine.step()  # the step in flight (async) is a decode step too from here on
    times, before = [], timer.snapshot()
    for _ in range(steps):
        t0 = time.perf_counter()
        rows = len(engine.step())
        times.append((time.perf_counter() - t0) * 1e3)
        if rows != batch:
            raise RuntimeError(f"a timed step returned {rows} deltas, not {batch}")
    after = timer.snapshot()
    for rid in list(engine._seqs):
        engine.abort(rid)
    while engine.has_unfinished_requests():
        engine.step()
    phases = {k: (after[k] - before[k]) * 1e3 / steps for k in PHASES}
    return {"step_ms": statistics.median(times), "mean_step_ms": statistics.mean(times), **phases}


def run_decode(llm: Any, stepper: Any, timer: PhaseTimer, args: argparse.Namespace) -> list:
    engine = llm.llm_engine
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",") if b]:
        row: dict[str, Any] = {"batch": batch, "context": args.context, "queue": args.queue}
        if engine.runner.graphs is not None:
            row["graph_ms"], row["graph_inputs_ms"] = graph_decode(engine, batch, args.context)
        for on in (False, True, False, True):  # interleaved; the second of each is kept
            set_mode(engine, stepper, on, timer)
            row["async" if on else "sync"] = decode_steps(engine, timer, batch, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_offline(llm: Any, stepper: Any, timer: PhaseTimer, args: argparse.Namespace) -> list:
    engine = llm.llm_engine
    vocab = engine.model_config.vocab_size
    profile = StepProfile(engine)  # step calls by the kind of step they launch
    rows = []
    for n in args.sweep:
        for on in (False, True) if n in args.sync_sizes else (True,):
            set_mode(engine, stepper, on, timer)
            reqs = make_requests(argparse.Namespace(**{**vars(args), "num_requests": n}), vocab)
            before = engine.stats()
            profile.reset()
            r = run_deploylab(llm, reqs)
            after = engine.stats()
            row = {
                "requests": n, "async": on, "seconds": r.seconds, "output_tps": r.output_tps,
                "steps": after.num_steps_total - before.num_steps_total,
                "preemptions": after.num_preemptions_total - before.num_preemptions_total,
                "step_kinds": {k: [profile.count[k], profile.seconds[k]] for k in profile.count},
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def report(decode: list, offline: list, device: str) -> None:
    print(f"\n{device}")
    print(f"{'batch':>6}{'graph ms':>10}{'mode':>7}{'step ms':>9}{'x graph':>9}  host ms per step")
    for row in decode:
        for mode in ("sync", "async"):
            r = row[mode]
            graph = row.get("graph_ms")
            ratio = f"{r['step_ms'] / graph:9.2f}" if graph else f"{'-':>9}"
            phases = " ".join(f"{k} {r[k]:.3f}" for k in PHASES)
            head = f"{row['batch']:>6}{graph or 0:>10.3f}{mode:>7}{r['step_ms']:>9.3f}{ratio}"
            print(f"{head}  {phases}")
    base = {r["async"]: r["output_tps"] for r in offline if r["requests"] == 256}
    print(f"\n{'requests':>8}{'mode':>7}{'seconds':>9}{'output tok/s':>14}{'vs 256':>8}", end="")
    print(f"{'preempt':>9}")
    for r in offline:
        ref = base.get(r["async"])
        vs = f"{r['output_tps'] / ref:8.2f}" if ref else f"{'-':>8}"
        mode = "async" if r["async"] else "sync"
        head = f"{r['requests']:>8}{mode:>7}{r['seconds']:>9.2f}{r['output_tps']:>14.1f}{vs}"
        print(f"{head}{r['preemptions']:>9}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from deploylab.engine import LLM

    t0 = time.perf_counter()
    llm = LLM(
        random_weights=args.shape, device=args.device, dtype=args.dtype,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_gib=args.kv_cache_gib, seed=args.seed, async_scheduling=True,
    )  # fmt: skip
    engine = llm.llm_engine
    stepper = engine.overlap
    if stepper is None:
        print("async scheduling is off on this engine", file=sys.stderr)
        return 2
    device = str(engine.device)
    if engine.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(engine.device)})"
    print(f"loaded in {time.perf_counter() - t0:.1f} s on {device} ({engine.dtype})", flush=True)
    timer = PhaseTimer(engine)
    same = check_tokens(llm, stepper, timer, args)
    print(f"greedy tokens identical async vs sync: {same}", flush=True)
    decode = run_decode(llm, stepper, timer, args)
    offline = run_offline(llm, stepper, timer, args)
    threads = torch.get_num_threads()
    report(decode, offline, f"{device}, {args.shape}, {engine.dtype}, threads {threads}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": device, "tokens_identical": same,
                       "decode": decode, "offline": offline}, f, indent=2)  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

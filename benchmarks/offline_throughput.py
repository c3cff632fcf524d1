"""Offline throughput: deploylab's engine vs transformers' batched `generate`, same run.

N requests with random prompt token ids and random input/output lengths (uniform in
[--min-len, --max-len]), generated with `ignore_eos` so every request produces exactly its
output length. Both sides get the same prompts and the same weights (transformers' Llama is
built from the weights deploylab loaded). transformers runs batches of --hf-batch-size
requests in input order, left-padded, each batch generating its longest output length;
only the requested output tokens count, as in vLLM's `benchmark_throughput --backend hf`.
Several --hf-batch-size values run transformers once each (the speed-up is taken against the
best); --hf-sort hands transformers the requests sorted by length.

    python benchmarks/offline_throughput.py --num-requests 32 --min-len 32 --max-len 256
    python benchmarks/offline_throughput.py --random-weights llama-3.2-1b --device cuda
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Result:
    """One side of the comparison."""

    name: str
    seconds: float
    output_tokens: int
    total_tokens: int

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def total_tps(self) -> float:
        return self.total_tokens / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100, help="min input and output length")
    p.add_argument("--max-len", type=int, default=1024, help="max input and output length")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--random-weights", metavar="SHAPE", help="random weights of a preset shape")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument(
        "--max-model-len", type=int, default=None, help="default: 2 x --max-len, rounded up"
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--kv-cache-gib", type=float, default=4.0, help="CPU KV cache size")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.5,
        help="CUDA share for weights + KV cache (the rest is left to transformers)",
    )
    p.add_argument(
        "--hf-batch-size",
        type=int,
        nargs="+",
        default=None,
        help="default: --max-num-seqs; several values run transformers once per value",
    )
    p.add_argument(
        "--hf-sort",
        action="store_true",
        help="hand transformers the requests sorted by output, then input length (less "
        "padding per batch); deploylab still gets them in the original order",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-hf", action="store_true", help="measure deploylab only")
    p.add_argument(
        "--hf-modes",
        default="generate",
        help="comma list: generate (eager batched), static (static cache + torch.compile), "
        "continuous (transformers' generate_batch machinery)",
    )
    p.add_argument(
        "--hf-cb-max-seqs",
        type=int,
        nargs="+",
        default=None,
        help="continuous: max requests per batch (default: transformers' choice, all of them); "
        "several values run it once each",
    )
    p.add_argument(
        "--hf-cb-max-batch-tokens", type=int, default=None, help="continuous: default 8192"
    )
    p.add_argument(
        "--hf-cb-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="continuous: any other ContinuousBatchingConfig field (VALUE read as JSON if it "
        "parses), e.g. use_cuda_graph=true, default_compile_level=1, scheduler_type=prefill_first",
    )
    p.add_argument("--hf-cb-deadline", type=float, default=300.0, help="continuous: seconds")
    p.add_argument(
        "--sweep",
        type=int,
        nargs="+",
        metavar="N",
        help="scaling sweep: deploylab alone on N requests each (same length distribution), "
        "output tok/s, preemptions and step kinds per size",
    )
    p.add_argument(
        "--async-scheduling",
        choices=["auto", "on", "off"],
        default="auto",
        help="overlap host work with the device (auto: the engine's default, on with CUDA)",
    )
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def make_requests(args: argparse.Namespace, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(args.seed)
    reqs = []
    for _ in range(args.num_requests):
        n_in = rng.randint(args.min_len, args.max_len)
        n_out = rng.randint(args.min_len, args.max_len)
        reqs.append(([rng.randrange(100, vocab) for _ in range(n_in)], n_out))
    return reqs


def hf_order(reqs: list[tuple[list[int], int]], sort: bool) -> list[tuple[list[int], int]]:
    """The order transformers gets the requests in: as given, or by output then input length
    (a batch then pads little and generates close to what its requests asked for)."""
    return sorted(reqs, key=lambda r: (r[1], len(r[0]))) if sort else reqs


def cb_options(pairs: list[str]) -> dict[str, Any]:
    """`--hf-cb-option KEY=VALUE` pairs as a dict; VALUE as JSON when it parses (true, 2, ...)."""
    from deploylab.errors import UsageError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--hf-cb-option wants KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_deploylab(llm: Any, reqs: list[tuple[list[int], int]]) -> Result:
    from deploylab.engine import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in reqs]
    device = llm.llm_engine.device
    sync(device)
    start = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params)
    sync(device)
    seconds = time.perf_counter() - start
    produced = sum(len(o.token_ids) for o in outs)
    expected = sum(n for _, n in reqs)
    assert produced == expected, f"deploylab produced {produced} tokens, expected {expected}"
    return Result("deploylab", seconds, expected, expected + sum(len(p) for p, _ in reqs))


class StepProfile:
    """Counts and times engine steps by kind (graph decode, eager decode, mixed, prefill)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.kind = ""
        self.count: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        runner, step = engine.runner, engine.step
        execute = runner.execute

        def timed_execute(out: Any) -> Any:
            n_dec = sum(1 for s in out.scheduled if s.num_new_tokens == 1)
            graph = runner.graphs is not None and n_dec == len(out.scheduled)
            if n_dec == len(out.scheduled):
                self.kind = "decode (graph)" if graph else "decode (eager)"
            else:
                self.kind = "mixed" if n_dec else "prefill"
            return execute(out)

        def timed_step() -> Any:
            self.kind = "empty"
            t0 = time.perf_counter()
            deltas = step()
            dt = time.perf_counter() - t0
            self.count[self.kind] = self.count.get(self.kind, 0) + 1
            self.seconds[self.kind] = self.seconds.get(self.kind, 0.0) + dt
            return deltas

        runner.execute = timed_execute
        engine.step = timed_step

    def reset(self) -> None:
        self.count.clear()
        self.seconds.clear()

    def summary(self) -> str:
        parts = [
            f"{k} {self.count[k]} x {1e3 * self.seconds[k] / self.count[k]:.2f} ms"
            for k in sorted(self.count)
        ]
        return "; ".join(parts)


def run_sweep(llm: Any, args: argparse.Namespace, vocab: int) -> list[dict[str, Any]]:
    """deploylab alone on each size of --sweep: the same length distribution, more requests."""
    engine = llm.llm_engine
    profile = StepProfile(engine)
    rows = []
    for n in args.sweep:
        reqs = make_requests(argparse.Namespace(**{**vars(args), "num_requests": n}), vocab)
        llm.reset_prefix_cache()  # sizes share their first prompts (same seed): no hits
        before = engine.stats()
        profile.reset()
        r = run_deploylab(llm, reqs)
        after = engine.stats()
        row = {
            "requests": n,
            "seconds": r.seconds,
            "output_tps": r.output_tps,
            "steps": after.num_steps_total - before.num_steps_total,
            "preemptions": after.num_preemptions_total - before.num_preemptions_total,
            "recomputed_tokens": getattr(after, "num_recomputed_tokens_total", 0)
            - getattr(before, "num_recomputed_tokens_total", 0),
            "step_kinds": {k: [profile.count[k], profile.seconds[k]] for k in profile.count},
        }
        rows.append(row)
        print(
            f"{n:>6} requests: {r.seconds:7.2f} s {r.output_tps:10.1f} output tok/s, "
            f"{row['steps']} steps, {row['preemptions']} preemptions, "
            f"{row['recomputed_tokens']} recomputed tokens | {profile.summary()}",
            flush=True,
        )
    base = next((r for r in rows if r["requests"] == 256), rows[0])
    print(
        f"\n{'requests':>8}{'seconds':>10}{'output tok/s':>15}{'vs ' + str(base['requests']):>9}"
        f"{'preemptions':>13}"
    )
    for r in rows:
        print(
            f"{r['requests']:>8}{r['seconds']:>10.2f}{r['output_tps']:>15.1f}"
            f"{r['output_tps'] / base['output_tps']:>9.2f}{r['preemptions']:>13}"
        )
    return rows


def run_hf(hf: Any, reqs: list[tuple[list[int], int]], batch_size: int) -> Result:
    device = next(hf.parameters()).device
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(reqs), batch_size):
        batch = reqs[i : i + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (prompt, _) in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        n_new = max(n for _, n in batch)
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape[1] == width + n_new
    sync(device)
    seconds = time.perf_counter() - start
    expected = sum(n for _, n in reqs)
    return Result("transformers", seconds, expected, expected + sum(len(p) for p, _ in reqs))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from deploylab.engine import LLM

    engine_args: dict[str, Any] = dict(
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len or -(-2 * args.max_len // 256) * 256,
        kv_cache_gib=args.kv_cache_gib,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed,
        async_scheduling={"auto": None, "on": True, "off": False}[args.async_scheduling],
    )
    if args.random_weights:
        engine_args["random_weights"] = args.random_weights
    else:
        engine_args["model"] = args.model
    t0 = time.perf_counter()
    llm = LLM(**engine_args)
    engine = llm.llm_engine
    print(f"loaded in {time.perf_counter() - t0:.1f} s on {engine.device} ({engine.dtype})")
    reqs = make_requests(args, engine.model_config.vocab_size)
    warm = [(p[:32], 4) for p, _ in reqs[:4]]
    run_deploylab(llm, warm)
    if args.sweep:
        rows = run_sweep(llm, args, engine.model_config.vocab_size)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "sweep": rows}, f, indent=2)
        return 0
    results = [run_deploylab(llm, reqs)]
    r = results[0]
    print(f"deploylab: {r.seconds:.1f} s, {r.output_tps:.1f} output tok/s", flush=True)
    engine.kv_cache.layers.clear()  # hand the cache memory to the transformers run
    engine.runner.workspace = type(engine.runner.workspace)(engine.device, engine.dtype)
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_hf:
        from deploylab.engine.models.hf_interop import transformers_twin

        hf = transformers_twin(engine.model)
        hf_reqs = hf_order(reqs, args.hf_sort)
        modes = args.hf_modes.split(",")
        for batch in args.hf_batch_size or [args.max_num_seqs]:
            if "generate" in modes:
                run_hf(hf, warm, batch)
                r = run_hf(hf, hf_reqs, batch)
                r.name = f"hf batch {batch}" + (" sorted" if args.hf_sort else "")
                results.append(r)
                print(f"{r.name}: {r.seconds:.1f} s, {r.output_tps:.1f} output tok/s", flush=True)
            if "static" in modes:
                from hf_baselines import run_hf_static

                r = run_hf_static(hf, hf_reqs, batch)
                r.name = f"hf static+compile batch {batch}"
                results.append(r)
                print(f"{r.name}: {r.seconds:.1f} s, {r.output_tps:.1f} output tok/s", flush=True)
        if "continuous" in modes:
            from hf_baselines import run_hf_continuous

            options = cb_options(args.hf_cb_option)
            for seqs in args.hf_cb_max_seqs or [None]:
                try:
                    r = run_hf_continuous(
                        hf, reqs, seqs, max_batch_tokens=args.hf_cb_max_batch_tokens,
                        options=options, deadline_s=args.hf_cb_deadline,
                    )  # fmt: skip
                except Exception as exc:  # report it; keep the other results
                    print(f"transformers continuous batching failed: {exc!r:.1000}", flush=True)
                    continue
                results.append(r)
                print(f"{r.name}: {r.seconds:.1f} s, {r.output_tps:.1f} output tok/s", flush=True)
    device = str(engine.device)
    if engine.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(engine.device)})"
    n_in = sum(len(p) for p, _ in reqs)
    n_out = sum(n for _, n in reqs)
    print(
        f"\n{args.num_requests} requests, lengths {args.min_len}-{args.max_len}, "
        f"{n_in} input + {n_out} output tokens, {device}, {engine.dtype}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'engine':<24}{'seconds':>10}{'output tok/s':>15}{'total tok/s':>14}")
    for r in results:
        print(f"{r.name:<24}{r.seconds:>10.1f}{r.output_tps:>15.1f}{r.total_tps:>14.1f}")
    if len(results) > 1:
        best = max(results[1:], key=lambda r: r.output_tps)
        speedup = results[0].output_tps / best.output_tps
        print(f"speed-up over the best transformers run ({best.name}): {speedup:.2f}x")
    for r in results[1:]:
        print(f"speed-up vs {r.name}: {results[0].output_tps / r.output_tps:.2f}x")
    if args.json:
        payload = {"args": vars(args), "device": device, "results": [asdict(r) for r in results]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

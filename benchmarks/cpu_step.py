"""Where a single-stream CPU decode step goes: `engine.step()` of the default model at batch 1.

Runs greedy chat requests through each engine of `--engines` (`eager`, `compiled`: built
with `cpu_compile`; a `-head4` suffix: with the int4 LM head; all int4 unless `--quantization
none`), and prints per engine the
median step time over the decode steps and how much of it is the model's forward (the
runner's compiled or eager call, timed around it). With `--cprofile N` it then profiles the
same decode steps and lists the N deploylab functions with the most own time: the host's
Python around the forward, which is what a single-stream step pays beyond the kernels.

    PYTHONPATH=src python benchmarks/cpu_step.py --engines eager compiled --cprofile 20

`--head-kernels` times one call of an LM head of the default model's shape (49152 x 576,
random weights, one row, one thread, best of 3 x 40 calls) as int8, int4 and bfloat16.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))


def decode_steps(engine: Any, prompt: str, steps: int, forward: list[float]) -> list[float]:
    """Seconds of each `engine.step()` after the prefill, for up to `steps` decode steps."""
    from deploylab.engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    engine.add_request(f"r{time.monotonic_ns()}", prompt, params)
    engine.step()  # the prefill
    forward.clear()
    times = []
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


def timed_forward(runner: Any, forward: list[float]) -> None:
    """Record the seconds of each `runner.execute` call into `forward`."""
    inner = runner.execute

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        forward.append(time.perf_counter() - t0)
        return out

    runner.execute = timed


def own_time(profiler: cProfile.Profile, rows: int, steps: int) -> dict[str, Any]:
    """deploylab functions' own time per step (ms) and their calls, busiest first."""
    stats = pstats.Stats(profiler)
    own = [
        (tt, nc, f"{Path(file).name}:{line} {name}")
        for (file, line, name), (_, nc, tt, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "deploylab" in file
    ]
    own.sort(reverse=True)
    return {
        "own_ms_per_step": 1e3 * sum(tt for tt, _, _ in own) / steps,
        "calls_per_step": sum(nc for _, nc, _ in own) / steps,
        "top": [(round(1e3 * tt / steps, 4), nc // steps, w) for tt, nc, w in own[:rows]],
    }


def head_kernels(rows: int = 49152, cols: int = 576) -> dict[str, float]:
    """Milliseconds per call of the LM head's int8, int4 and bfloat16 forms (one row)."""
    import torch

    from deploylab.engine.cpu_quant import Int8Weight, int4_from_float

    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 0.05
    x = torch.randn(1, cols)
    int8, int4, bf16 = Int8Weight(w), int4_from_float(w), w.to(torch.bfloat16)
    calls = {
        "int8": lambda: int8.matmul(x),
        "int4": lambda: int4.matmul(x),
        "bfloat16": lambda: torch.nn.functional.linear(x.to(torch.bfloat16), bf16),
    }
    out = {}
    for name, call in calls.items():
        for _ in range(5):
            call()
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(40):
                call()
            best.append((time.perf_counter() - t0) / 40)
        out[name] = round(1e3 * min(best), 3)
    return out


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median step and forward times of one engine, and its host profile if asked."""
    from deploylab.engine import EngineConfig, LLMEngine
    from speculative import CHAT

    config = EngineConfig(
        model="smollm2-135m-instruct", device="cpu", dtype="float32", kv_cache_gib=0.25,
        max_num_seqs=1, quantization=args.quantization, cpu_compile=name.startswith("compiled"),
        lm_head_quantization="int4" if name.endswith("-head4") else "int8",
    )  # fmt: skip
    t0 = time.perf_counter()
    engine = LLMEngine(config)
    start = time.perf_counter() - t0
    forward: list[float] = []
    timed_forward(engine.runner, forward)
    decode_steps(engine, CHAT[0], 8, forward)  # warm-up
    steps: list[float] = []
    fwd: list[float] = []
    for prompt in CHAT[: args.prompts]:
        steps += decode_steps(engine, prompt, args.steps, forward)
        fwd += forward
    row: dict[str, Any] = {
        "engine": name,
        "start_s": round(start, 1),
        "steps": len(steps),
        "step_ms_p50": round(1e3 * statistics.median(steps), 3),
        "forward_ms_p50": round(1e3 * statistics.median(fwd), 3),
    }
    row["outside_forward_ms"] = round(row["step_ms_p50"] - row["forward_ms_p50"], 3)
    print(json.dumps(row), flush=True)
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        n = len(decode_steps(engine, CHAT[0], args.steps, forward))
        profiler.disable()
        prof = own_time(profiler, args.cprofile, n)
        print(f"{name}: deploylab own time {prof['own_ms_per_step']:.3f} ms/step in "
              f"{prof['calls_per_step']:.0f} calls")  # fmt: skip
        for ms, calls, where in prof["top"]:
            print(f"  {ms:8.4f} ms {calls:5d}  {where}")
        row["profile"] = prof
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--engines", nargs="+", default=["eager", "compiled"],
        choices=["eager", "compiled", "eager-head4", "compiled-head4"],
    )  # fmt: skip
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "int4"])
    p.add_argument("--steps", type=int, default=96, help="decode steps per prompt")
    p.add_argument("--prompts", type=int, default=3, help="chat prompts measured")
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="list N functions")
    p.add_argument("--head-kernels", action="store_true", help="time the LM head's forms first")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if args.head_kernels:
        print(json.dumps({"lm_head_ms": head_kernels()}), flush=True)
    rows = [measure(name, args) for name in args.engines]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

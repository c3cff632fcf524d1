"""Where a returning session's TTFT goes with the KV host tier: profile one return per mode.

Builds `kv_tiers.py`'s engines, pushes a session of `--context` tokens off the device (to the
host tier in the host modes), and runs its return under `torch.profiler`. Prints per mode the
TTFT of each repeat, how many copy runs the tier issued, the busy time and span of host-to-
device copies, device-to-host copies and kernels, each stream's span, and the host's busiest
ops; with `--out DIR` it also writes each trace's events (gzipped JSON) for a closer look.

    PYTHONPATH=src python benchmarks/kv_tiers_profile.py --random-weights llama-3.2-1b \\
        --device cuda --context 16384 --modes host-layerwise resident --out $OUT

Every return line also gives the scheduler's time for it (the return's admission). The host's
Python alone, on a CPU in seconds (`tiny-deep`: the 1B shape's 16 layers at tiny widths):

    PYTHONPATH=src python benchmarks/kv_tiers_profile.py --random-weights tiny-deep \\
        --device cpu --modes host-ahead resident --cprofile 20
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import json
import pstats
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import kv_tiers as kb  # noqa: E402
from deploylab.engine.kv_tiers import layerwise  # noqa: E402
from gpu_timeline import trace_events  # noqa: E402

COPIES = {"runs": 0}


def count_runs(apply_runs: Any) -> Any:
    """Wrap `apply_copy_runs` to count the copies (runs of consecutive slots) it issues."""

    def counting(pool: Any, staging: Any, runs: list[Any], to_pool: bool) -> Any:
        COPIES["runs"] += len(runs)
        return apply_runs(pool, staging, runs, to_pool)

    return counting


def span(events: list[dict[str, Any]], t0: float) -> str:
    """Count, busy ms and first-to-last span (ms from the trace start) of `events`."""
    if not events:
        return "none"
    a = min(float(e["ts"]) for e in events) - t0
    b = max(float(e["ts"]) + float(e["dur"]) for e in events) - t0
    busy = sum(float(e["dur"]) for e in events) / 1e3
    return f"{len(events)} ops, {busy:.2f} ms busy, span {a / 1e3:.2f}-{b / 1e3:.2f} ms"


def report(mode: str, events: list[dict[str, Any]]) -> None:
    """Print the copy, kernel and stream spans and the host's busiest ops of one trace."""
    t0 = min(float(e["ts"]) for e in events)
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    copies = [e for e in gpu if e.get("cat") == "gpu_memcpy"]
    print(f"{mode} H2D: {span([e for e in copies if 'HtoD' in e['name']], t0)}")
    print(f"{mode} D2H: {span([e for e in copies if 'DtoH' in e['name']], t0)}")
    print(f"{mode} kernels: {span([e for e in gpu if e.get('cat') == 'kernel'], t0)}")
    streams: dict[Any, list[dict[str, Any]]] = {}
    for e in gpu:
        streams.setdefault(e.get("args", {}).get("stream"), []).append(e)
    for stream, sel in streams.items():
        print(f"{mode} stream {stream}: {span(sel, t0)}")
    host: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "cpu_op":
            host[e["name"]] += float(e["dur"])
    top = ", ".join(f"{n} {d / 1e3:.2f} ms" for n, d in host.most_common(8))
    print(f"{mode} host ops (nested included): {top}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--random-weights", default="llama-3.2-1b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--context", type=int, default=16384)
    p.add_argument("--modes", nargs="+", default=["host-layerwise", "resident"])
    p.add_argument("--repeats", type=int, default=3, help="returns per mode; the last profiled")
    p.add_argument("--out", type=Path, default=None, help="write the traces' events here")
    p.add_argument(
        "--cprofile", type=int, default=0, metavar="N",
        help="profile the last return with cProfile instead (the host's Python; N rows)",
    )  # fmt: skip
    args = p.parse_args()
    layerwise.apply_copy_runs = count_runs(layerwise.apply_copy_runs)  # type: ignore[assignment]
    ns = argparse.Namespace(
        contexts=[args.context], random_weights=args.random_weights, device=args.device,
        reps=1, disk_contexts=None, max_num_batched_tokens=2048, disk_gib=16.0,
        disk_root=None, threads=1, json=None,
    )  # fmt: skip
    model, tok, path = kb.load_model(ns)
    vocab, length = model.config.vocab_size, args.context
    cuda = args.device == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    activities += [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    for mode in args.modes:
        small = int(1.1 * length) + kb.NEW_TOKENS
        cache = 5 * (length + kb.NEW_TOKENS) if mode == "resident" else small
        host = small + 4 * (length + kb.NEW_TOKENS)
        engine = kb.make_engine(model, tok, path, ns, mode, cache, host, None)
        schedule_s = timed_schedule(engine)
        rng = random.Random(0)

        def session(n: int, r: random.Random = rng) -> list[int]:
            return [r.randrange(vocab // 8, vocab - vocab // 8) for _ in range(n)]

        kb.ttft(engine, "warm", session(35))
        for rep in range(args.repeats):
            mine = random.Random(rep)
            back = [mine.randrange(vocab // 8, vocab - vocab // 8) for _ in range(length + 8)]
            kb.ttft(engine, f"a{rep}", back[:length])
            pushed = 0
            while mode != "resident" and pushed < small + length:  # push it off the device
                kb.ttft(engine, f"o{rep}-{pushed}", session(length))
                pushed += length
            COPIES["runs"] = 0
            schedule_s.clear()
            if cuda:
                torch.cuda.synchronize()
            last = rep == args.repeats - 1
            if last and args.cprofile:
                host_profile(mode, engine, f"b{rep}", back, args.cprofile)
                continue
            with torch.profiler.profile(activities=activities) if last else _null() as prof:
                seconds, _ = kb.ttft(engine, f"b{rep}", back)
            print(
                f"{mode} return {rep}: TTFT {seconds * 1e3:.1f} ms, copy runs {COPIES['runs']}, "
                f"scheduling {max(schedule_s) * 1e3:.2f} ms"
            )
        if args.cprofile:
            del engine
            continue
        events = trace_events(prof)
        report(mode, events)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with gzip.open(args.out / f"trace_{mode}.json.gz", "wt") as f:
                json.dump(events, f)
        del engine
        if cuda:
            torch.cuda.empty_cache()


def timed_schedule(engine: Any) -> list[float]:
    """Record the seconds of every `engine.scheduler.schedule()` call (the return's admission:
    prefix and tier lookups, block allocation) in the returned list."""
    inner, seconds = engine.scheduler.schedule, []

    def schedule() -> Any:
        t0 = time.perf_counter()
        out = inner()
        seconds.append(time.perf_counter() - t0)
        return out

    engine.scheduler.schedule = schedule
    return seconds


def host_profile(mode: str, engine: Any, rid: str, ids: list[int], rows: int) -> None:
    """Run one return under cProfile; print its TTFT, the calls and own time of deploylab's
    functions (the host's Python of the step) and the `rows` busiest of them."""
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, _ = kb.ttft(engine, rid, ids)
    profiler.disable()
    stats = pstats.Stats(profiler)
    own = [
        (tt, nc, f"{Path(file).name}:{line} {name}")
        for (file, line, name), (_, nc, tt, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "deploylab" in file
    ]
    total = sum(tt for tt, _, _ in own)
    calls = sum(nc for _, nc, _ in own)
    print(f"{mode} return (cProfile): TTFT {seconds * 1e3:.1f} ms, deploylab own time "
          f"{total * 1e3:.1f} ms in {calls} calls")  # fmt: skip
    for tt, nc, where in sorted(own, reverse=True)[:rows]:
        print(f"  {tt * 1e3:7.2f} ms {nc:7d}  {where}")


class _null:
    """A do-nothing context manager (repeats before the profiled one)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()

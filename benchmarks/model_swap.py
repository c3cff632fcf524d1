"""Model swap: wake from sleep level 1 and 2 against a cold start, in one running process.

For each model: a warm-up engine is built and dropped (CUDA context, kernels), then a cold
start is timed (a new `LLMEngine` from the checkpoint: read, copy to the device, KV cache,
CUDA graphs; the checkpoint in the page cache, and for random-weight shapes once more after
its pages are dropped: a cold start from the disk), then the engine sleeps and wakes
`--repeats` times per level. Each wake is followed by one request whose time to first token
(TTFT) is recorded, and a check that 16 greedy tokens equal those from before the first sleep.
Engines run in sleep mode (weights and KV cache at fixed addresses, CUDA graphs kept across a
wake); the same level-1 wake is also timed without sleep mode (memory moves; on CUDA graphs
re-captured) and on CUDA without graphs. Host->device bandwidth is measured with one pinned
buffer, so the level-1 wake can be compared with its ideal (weight bytes / bandwidth).
Random-weight shapes are saved as a safetensors checkpoint first, so a cold start and a level-2 wake
read real files.

    python benchmarks/model_swap.py                                   # the default model, CPU
    python benchmarks/model_swap.py --shape llama-3.2-1b --shape llama-3.2-3b --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from deploylab.engine.config import EngineConfig
from deploylab.engine.llm_engine import LLMEngine
from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.presets import get_preset
from deploylab.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)

# Llama-3.2-3B's shape (not a preset of the engine: only this benchmark uses it).
LLAMA_3B = dict(
    hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
    num_key_value_heads=8, head_dim=128,
)  # fmt: skip


def shape_config(name: str) -> LlamaConfig:
    """A preset shape, or llama-3.2-3b derived from the 1B preset."""
    if name == "llama-3.2-3b":
        return get_preset("llama-3.2-1b").with_updates(**LLAMA_3B)
    return get_preset(name)


def save_random_checkpoint(config: LlamaConfig, dtype: torch.dtype, device: str, to: Path) -> None:
    """Random weights of `config` as an HF directory (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    from deploylab.engine.models.loader import init_random_model

    model = init_random_model(config, dtype, device)
    state = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    del model
    save_file(state, str(to / "model.safetensors"))
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "eos_token_id": list(config.eos_token_ids),
    }  # fmt: skip
    (to / "config.json").write_text(json.dumps(hf))


def h2d_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Pinned host -> device copy bandwidth, bytes/s (best of 5); None on the CPU."""
    if device.type != "cuda":
        return None
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    del host, dev
    release(device)
    return nbytes / best


def ttft(engine: LLMEngine, rid: str, prompt_len: int) -> float:
    """Seconds from adding a request of `prompt_len` token ids (distinct per `rid`) to its
    first token."""
    salt = zlib.crc32(rid.encode())  # a prompt of its own: no prefix-cache hit
    prompt = [(i * 37 + salt + (i * salt) % 7) % 400 + 10 for i in range(prompt_len)]
    t = time.perf_counter()
    engine.add_request(rid, prompt, SamplingParams(max_tokens=1, temperature=0.0))
    first = None
    while engine.has_unfinished_requests():
        for delta in engine.step():
            if delta.new_token_ids and first is None:
                first = time.perf_counter() - t
    assert first is not None
    return first


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what dropped objects held, so the next engine sizes its KV cache alike."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def drop_page_cache(directory: Path) -> float | None:
    """Ask the kernel to forget the checkpoint's pages (`posix_fadvise(DONTNEED)`, no root
    needed) so the next load reads the disk; returns the fraction still cached (mincore),
    None if unknown (tmpfs keeps its pages whatever we ask)."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    cached = total = 0
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.stat().st_size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(fd).st_size
            with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as region:  # nothing read
                pages = -(-size // mmap.PAGESIZE)
                vec = (ctypes.c_ubyte * pages)()
                buf = (ctypes.c_char * size).from_buffer(region)
                if libc.mincore(buf, ctypes.c_size_t(size), vec) != 0:
                    return None
                cached += sum(b & 1 for b in vec)
                total += pages
                del buf
        finally:
            os.close(fd)
    return cached / total if total else None


def bench_model(label: str, settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Cold start, then sleep/wake per level, each with the next request's TTFT. Sleep mode
    (fixed addresses, graphs kept) against the moving path (graphs re-captured) in one run."""
    fixed = {**settings, "enable_sleep_mode": True}
    warm = LLMEngine(EngineConfig(**fixed))  # the process warms up
    ttft(warm, "warm", args.prompt_len)
    device = warm.device
    del warm
    release(device)
    t = time.perf_counter()
    engine = LLMEngine(EngineConfig(**fixed))
    sync(device)
    cold = time.perf_counter() - t
    cold_ttft = ttft(engine, "cold", args.prompt_len)
    weights = engine.sleeper.weight_bytes()
    reference = greedy(engine)
    out: dict[str, Any] = {
        "model": label,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "fixed_addresses": engine.sleeper.fixed_addresses,
        "weight_bytes": weights,
        "kv_bytes": engine.sleeper.kv_bytes(),
        "cold_start_s": cold,
        "cold_ttft_s": cold_ttft,
        "warm_ttft_s": statistics.median(ttft(engine, f"w{i}", args.prompt_len) for i in range(3)),
    }
    for level in (1, 2):
        out[f"level{level}"] = sleep_wake(engine, level, args, f"l{level}", reference)
    if args.sleep_gap:
        out["level1_after_gap"] = sleep_wake(engine, 1, args, "gap", reference, args.sleep_gap)
    if args.profile_wake:
        out["wake_profile"] = profile_wake(engine)
        out["copy_probe_in_process"] = copy_probe(engine)
    del engine
    release(device)
    if "model" in settings:  # a cold start from the disk: the checkpoint's pages dropped
        out["page_cache_left"] = drop_page_cache(Path(settings["model"]))
        t = time.perf_counter()
        engine = LLMEngine(EngineConfig(**fixed))
        sync(device)
        out["cold_disk_start_s"] = time.perf_counter() - t
        del engine
        release(device)
    # The same wake without sleep mode (memory moves; on CUDA the graphs are re-captured).
    engine = LLMEngine(EngineConfig(**settings))
    out["level1_moving"] = sleep_wake(engine, 1, args, "mv", greedy(engine))
    del engine
    release(device)
    if device.type == "cuda":
        engine = LLMEngine(EngineConfig(**fixed, cuda_graphs=False))
        out["level1_no_graphs"] = sleep_wake(engine, 1, args, "ng", greedy(engine))
        del engine
        release(device)
    return out


def profile_wake(engine: LLMEngine) -> dict[str, Any]:
    """One more level-1 sleep and wake, the wake under `torch.profiler`: the host's busiest
    ops and each copy kind's busy time and span (ms from the wake's first event)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_timeline import trace_events

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    engine.sleep(1)
    with torch.profiler.profile(activities=activities) as prof:
        engine.wake_up()
    events = trace_events(prof)
    t0 = min(float(e["ts"]) for e in events)
    out: dict[str, Any] = {}
    for cat in ("gpu_memcpy", "gpu_memset", "kernel"):
        sel = [e for e in events if e.get("cat") == cat]
        if sel:
            out[cat] = {
                "ops": len(sel),
                "busy_ms": sum(float(e["dur"]) for e in sel) / 1e3,
                "span_ms": (
                    (min(float(e["ts"]) for e in sel) - t0) / 1e3,
                    (max(float(e["ts"]) + float(e["dur"]) for e in sel) - t0) / 1e3,
                ),
            }
    copies = sorted(
        (e for e in events if e.get("cat") == "gpu_memcpy"), key=lambda e: -float(e["dur"])
    )
    out["largest_copies"] = [
        {
            "name": e["name"],
            "start_ms": (float(e["ts"]) - t0) / 1e3,
            "ms": float(e["dur"]) / 1e3,
            "bytes": (e.get("args") or {}).get("bytes"),
            "gb_s": (e.get("args") or {}).get("memory bandwidth (GB/s)"),
        }
        for e in copies[:4]
    ]
    driver = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    out["driver_calls"] = [
        {"name": e["name"], "start_ms": (float(e["ts"]) - t0) / 1e3, "ms": float(e["dur"]) / 1e3}
        for e in sorted(driver, key=lambda e: -float(e["dur"]))[:8]
    ]
    host: dict[str, float] = {}
    for e in events:
        if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver"):
            host[e["name"]] = host.get(e["name"], 0.0) + float(e["dur"]) / 1e3
    out["host_ms"] = dict(sorted(host.items(), key=lambda kv: -kv[1])[:12])
    print(f"  wake profile: {json.dumps(out)}")
    return out


def copy_probe(engine: LLMEngine) -> dict[str, Any]:
    """Host-to-device copy speed inside the engine's process: a fresh pinned buffer of the
    weights' size, and the level-1 host copy a sleep leaves, each with the NUMA nodes of its
    pages; tells a slow wake copy from a slow process or a slow buffer."""
    fixed = engine.sleeper.fixed
    if engine.device.type != "cuda" or fixed is None:
        return {}
    n = fixed.weights.nbytes
    dev = torch.empty(n, dtype=torch.uint8, device=engine.device)

    def gb_s(src: torch.Tensor, dev: torch.Tensor = dev) -> list[float]:
        out = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dev.copy_(src, non_blocking=True)
            end.record()
            torch.cuda.synchronize()
            out.append(n / (start.elapsed_time(end) / 1e3) / 1e9)
        return out

    fresh = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    fresh.fill_(1)
    result: dict[str, Any] = {"fresh_gb_s": gb_s(fresh), "fresh_numa": numa_pages(fresh)}
    del fresh
    engine.sleep(1)
    assert fixed.host is not None
    result["slept_gb_s"] = gb_s(fixed.host)
    result["slept_numa"] = numa_pages(fixed.host)
    engine.wake_up()
    print(f"  copy probe in the engine's process: {json.dumps(result)}")
    return result


def numa_pages(t: torch.Tensor) -> str:
    """The `N<node>=<pages>` fields of the mapping holding `t` (/proc/self/numa_maps)."""
    ptr, best = t.data_ptr(), (-1, "")
    try:
        with open("/proc/self/numa_maps") as f:
            for line in f:
                addr = int(line.split()[0], 16)
                if best[0] < addr <= ptr:
                    best = (addr, line)
    except OSError as exc:
        return f"unreadable: {exc}"
    return " ".join(w for w in best[1].split() if w[:1] == "N" and "=" in w)


def greedy(engine: LLMEngine) -> list[int]:
    """16 greedy tokens of a fixed prompt (decode steps replay the CUDA graphs)."""
    engine.add_request(f"g{time.perf_counter_ns()}", list(range(10, 74)), GREEDY)
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for delta in engine.step():
            tokens += delta.new_token_ids
    return tokens


def sleep_wake(
    engine: LLMEngine,
    level: int,
    args: argparse.Namespace,
    tag: str,
    reference: list[int],
    gap: float = 0.0,
) -> dict[str, Any]:
    """`--repeats` sleeps and wakes at `level` (`gap` seconds asleep), each followed by one
    request; medians + runs. `identical`: every wake's greedy output equals `reference`
    (taken before any sleep)."""
    runs = []
    identical = True
    for i in range(args.repeats):
        graphs = engine.runner.graphs
        slept = engine.sleep(level)
        time.sleep(gap)
        woke = engine.wake_up()
        kept = graphs is not None and engine.runner.graphs is graphs
        runs.append(
            {
                "sleep_s": slept.seconds,
                "wake_s": woke.seconds,
                "weights_s": woke.weights_seconds,
                "alloc_s": woke.alloc_seconds,
                "graphs_s": woke.graphs_seconds,
                "device_copy_s": woke.copy_seconds or 0.0,  # device clock: copy ended
                "device_zero_s": woke.zero_seconds or 0.0,  # ... KV cache zeroed
                "ttft_after_wake_s": ttft(engine, f"{tag}-{i}", args.prompt_len),
                "graphs_kept": float(kept),
            }
        )
        identical = identical and greedy(engine) == reference
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["runs"] = runs
    out["identical"] = identical
    return out


def report(r: dict[str, Any], bw: float | None) -> None:
    gb = r["weight_bytes"] / 1e9
    print(f"\n{r['model']} on {r['device']} ({r['dtype']}, weights {gb:.2f} GB)")
    print(f"  cold start {r['cold_start_s']:.3f} s, first TTFT {r['cold_ttft_s'] * 1e3:.1f} ms,")
    print(f"  warm TTFT {r['warm_ttft_s'] * 1e3:.1f} ms")
    if "cold_disk_start_s" in r:
        left = r["page_cache_left"]
        print(
            f"  cold start from disk {r['cold_disk_start_s']:.3f} s (page cache left: "
            f"{'unknown' if left is None else f'{left:.0%}'})"
        )
    print(f"  sleep mode at fixed addresses: {r['fixed_addresses']}")
    for level in ("1", "1_after_gap", "2", "1_moving", "1_no_graphs"):
        if f"level{level}" not in r:
            continue
        x = r[f"level{level}"]
        print(
            f"  level {level}: sleep {x['sleep_s']:.3f} s, wake {x['wake_s']:.3f} s "
            f"(weights {x['weights_s']:.3f} s, of which allocation {x['alloc_s']:.3f} s; "
            f"CUDA graphs {x['graphs_s']:.3f} s; device clock: copy done at "
            f"{x['device_copy_s']:.3f} s, KV zeroed at {x['device_zero_s']:.3f} s), "
            f"TTFT after wake {x['ttft_after_wake_s'] * 1e3:.1f} ms, "
            f"{r['cold_start_s'] / x['wake_s']:.1f}x faster than cold, graphs kept "
            f"{x['graphs_kept']:.0%}, output identical {x['identical']}"
        )
    if bw:
        ideal = r["weight_bytes"] / bw
        x = r["level1"]
        r["ideal_weights_s"] = ideal
        print(
            f"  host->device {bw / 1e9:.1f} GB/s: ideal weight copy {ideal:.3f} s; level-1 "
            f"weights {x['weights_s'] / ideal:.2f}x ideal, whole wake {x['wake_s'] / ideal:.2f}x"
        )
        if "level1_after_gap" in r:
            g = r["level1_after_gap"]
            print(f"  after a gap asleep: whole wake {g['wake_s'] / ideal:.2f}x ideal")


def bench_one(
    shape: str | None, common: dict[str, Any], dev: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    """The default model (shape None) or a random-weight shape saved as a checkpoint."""
    if shape is None:
        return bench_model("smollm2-135m-instruct", common, args)
    with tempfile.TemporaryDirectory(dir=args.checkpoint_root) as tmp:
        dtype = EngineConfig(dtype=args.dtype).torch_dtype(dev)
        save_random_checkpoint(shape_config(shape), dtype, str(dev), Path(tmp))
        release(dev)
        return bench_model(shape, {**common, "model": tmp}, args)


def _without_shapes_and_out(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--shape", "--out"):
            skip = True
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", action="append", help="random-weight shape (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--kv-cache-gib", type=float, default=0.25, help="KV cache on the CPU")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument(
        "--sleep-gap", type=float, default=0.0,
        help="also time level-1 wakes after this many seconds asleep (the driver's work on "
        "the memory a sleep released can halve the copy's bandwidth for ~0.1 s)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--profile-wake", action="store_true", help="one more level-1 wake under torch.profiler"
    )
    p.add_argument(
        "--checkpoint-root", default=".", help="where random-weight checkpoints are written "
        "(a real disk, not tmpfs, for the cold start from disk)",
    )  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    common: dict[str, Any] = dict(
        device=args.device, dtype=args.dtype, max_model_len=2048, max_num_seqs=16,
        kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
        num_threads=args.threads,
    )  # fmt: skip
    dev = EngineConfig(device=args.device).torch_device()
    bw = h2d_bandwidth(dev)
    results = []
    shapes = args.shape or [None]
    if len(shapes) > 1:  # one process per shape: nothing of one model stays for the next
        for shape in shapes:
            with tempfile.TemporaryDirectory() as tmp:
                part = Path(tmp) / "part.json"
                argv_one = [a for a in (argv or sys.argv[1:])]
                argv_one = _without_shapes_and_out(argv_one) + [
                    "--shape",
                    shape,
                    "--out",
                    str(part),
                ]
                subprocess.run([sys.executable, __file__, *argv_one], check=True)
                results += json.loads(part.read_text())["results"]
    else:
        results.append(bench_one(shapes[0], common, dev, args))
        report(results[-1], bw)
    doc = {"h2d_bytes_per_s": bw, "command": " ".join(sys.argv), "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

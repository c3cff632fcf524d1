"""KV cache tiers: time to first token of a returning session, tiers off / host / disk vs
everything resident on the device, both sides in the same run.

Per context length L and mode, on one engine per mode: session A (L random tokens) is
prefilled; other sessions of L tokens (the "other users") then run until A's blocks have
left the device cache (the cache holds about 1.1 x the longest context); then A returns with
64 new tokens and we time its first token (a `max_tokens=1` request, `LLMEngine.step` until
its token is out). Modes:

- `resident`: a device cache big enough for everything (A is still there: the floor);
- `off`: the small device cache, no tiers (A is recomputed);
- `host`: the small cache plus a host tier that holds the sessions (`--kv-offload-gib`),
  copies in chunks, all done before the forward pass;
- `host-layerwise`: the same, copies layer by layer, each layer's compute waiting only for
  its own blocks (`kv_offload_layerwise`);
- `host-ahead`: `host-layerwise` with write-ahead (`kv_offload_write_ahead`): full blocks go
  to the host tier in the steps after they are computed, so the evictions on A's return find
  them there and the return pays only the copies in;
- `disk`: the small cache, a 64-block host tier, and a disk tier in a temporary directory;
  A's block files are dropped from the page cache (posix_fadvise DONTNEED) before it returns,
  so reads come from the disk, not from memory. The cost model may decline slow disk hits;
  `disk-always` takes every hit (policy "always").

    python benchmarks/kv_tiers.py --contexts 1024 2048 --modes off host disk resident
    python benchmarks/kv_tiers.py --random-weights llama-3.2-1b --device cuda \\
        --contexts 4096 8192 16384 32768 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from deploylab.engine import EngineConfig, LLMEngine, SamplingParams
from deploylab.engine.kv_cache import CUDA_RESERVE_BYTES, bytes_per_block

GIB = 1024**3
NEW_TOKENS = 64
BLOCK = 16


def load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The model (random weights of a preset, or the default model) and its tokenizer."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.random_weights:
        from deploylab.engine.models.loader import init_random_model
        from deploylab.engine.models.presets import get_preset

        return init_random_model(get_preset(args.random_weights), dtype, device), None, ""
    from deploylab.catalog import resolve_model
    from deploylab.engine.models.loader import load_model as load
    from deploylab.engine.tokenizer import load_tokenizer

    path = resolve_model("smollm2-135m-instruct")
    model, _ = load(path, dtype, device)
    return model, load_tokenizer(path), str(path)


def make_engine(
    model: Any,
    tok: Any,
    path: str,
    args: argparse.Namespace,
    mode: str,
    cache_tokens: int,
    host_tokens: int,
    disk_dir: str | None,
) -> LLMEngine:
    """An engine whose device cache holds `cache_tokens` (plus a margin) and the mode's tiers."""
    device = torch.device(args.device)
    dtype = next(model.parameters()).dtype
    per_block = bytes_per_block(model.config, BLOCK, dtype)
    cache_bytes = (-(-cache_tokens // BLOCK) + 4) * per_block
    settings: dict[str, Any] = {
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "block_size": BLOCK,
        "max_num_seqs": 8,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "cuda_graphs": False,
        "max_model_len": max(args.contexts) + NEW_TOKENS + 16,
    }
    if args.random_weights:
        settings["random_weights"] = args.random_weights
    else:
        settings["model"] = path
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        settings["gpu_memory_utilization"] = (used + CUDA_RESERVE_BYTES + cache_bytes) / total
    else:
        settings["kv_cache_gib"] = cache_bytes / GIB
    if mode in ("host", "host-layerwise", "host-ahead", "disk", "disk-always"):
        host = host_tokens if mode.startswith("host") else 64 * BLOCK
        settings["kv_offload_layerwise"] = mode in ("host-layerwise", "host-ahead")
        settings["kv_offload_write_ahead"] = mode == "host-ahead"
        settings["kv_offload_gib"] = (-(-host // BLOCK) + 1) * per_block / GIB
    if mode in ("disk", "disk-always"):
        settings["kv_offload_dir"] = disk_dir
        settings["kv_offload_disk_gib"] = args.disk_gib
        settings["kv_offload_policy"] = "always" if mode == "disk-always" else "auto"
    return LLMEngine(EngineConfig(**settings), model=model, tokenizer=tok)


def ttft(engine: LLMEngine, rid: str, ids: list[int]) -> tuple[float, int]:
    """Seconds from queueing a one-token request to its token (the engine runs alone), and
    the token."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    t0 = time.perf_counter()
    engine.add_request(rid, ids, params)
    while engine.has_unfinished_requests():
        for delta in engine.step():
            if delta.new_token_ids:
                seconds = time.perf_counter() - t0
                while engine.has_unfinished_requests():
                    engine.step()
                return seconds, delta.new_token_ids[0]
    raise RuntimeError("no token")


def drop_page_cache(directory: str) -> None:
    """Ask the kernel to forget the block files' pages, so the next read hits the disk."""
    for path in Path(directory).rglob("*.kvblock"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_mode(
    model: Any, tok: Any, path: str, args: argparse.Namespace, mode: str, vocab: int
) -> list[dict[str, Any]]:
    """TTFT of returning sessions at each context for one mode (one engine)."""
    lmax = max(args.contexts)
    small = int(1.1 * lmax) + NEW_TOKENS
    cache = 5 * (lmax + NEW_TOKENS) if mode == "resident" else small
    host = small + 4 * (lmax + NEW_TOKENS)
    with tempfile.TemporaryDirectory(prefix="kvtiers-", dir=args.disk_root) as disk_dir:
        engine = make_engine(model, tok, path, args, mode, cache, host, disk_dir)
        rng = random.Random(0)

        def session(n: int) -> list[int]:
            return [rng.randrange(1000, vocab - 1000) for _ in range(n)]

        ttft(engine, "warmup", session(2 * BLOCK + 3))
        rows = []
        for length in args.contexts:
            if mode.startswith("disk") and args.disk_contexts and length not in args.disk_contexts:
                continue
            times, cached, tokens = [], [], []
            for rep in range(args.reps):
                mine = random.Random(length * 1000 + rep)  # A: the same in every mode
                a = [mine.randrange(1000, vocab - 1000) for _ in range(length + NEW_TOKENS)]
                back, a = a, a[:length]
                ttft(engine, f"a{length}-{rep}", a)
                other = 0
                while mode != "resident" and other < small + length:  # push A off the device
                    ttft(engine, f"o{length}-{rep}-{other}", session(length))
                    other += length
                if mode.startswith("disk"):
                    assert engine.kv_tiers is not None and engine.kv_tiers.disk is not None
                    engine.kv_tiers.disk.flush()  # the writes done (a user thinks meanwhile)
                    drop_page_cache(disk_dir)
                ext = engine.stats().external_prefix_cache_hits
                hits = engine.block_manager.prefix_hits
                seconds, token = ttft(engine, f"back{length}-{rep}", back)
                times.append(seconds)
                tokens.append(token)
                ext = engine.stats().external_prefix_cache_hits - ext
                cached.append((engine.block_manager.prefix_hits - hits, ext))
            row = {
                "mode": mode,
                "context": length,
                "ttft_s": statistics.median(times),
                "ttft_all_s": times,
                "device_hit_tokens": cached[-1][0],
                "tier_hit_tokens": cached[-1][1],
                "first_tokens": tokens,
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        if engine.kv_tiers is not None:
            cost = engine.kv_tiers.cost
            for row in rows:
                row["bandwidth_bytes_s"] = dict(cost.bandwidth)
                row["prefill_tokens_s"] = cost.prefill_tps
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def summarize_scenario(out: Path) -> None:
    """Per-turn TTFT of `benchmarks/kv_tiers_scenario.sh`'s two runs (tiers off vs host)."""
    from deploylab.loadtest.results import load_results

    runs = {name: load_results(out / name / "results.json") for name in ("off", "host")}
    turns = sorted({t for r in runs.values() for t in r.summary.classes.get("turn", {})}, key=int)
    print(f"{'turn':>5}" + "".join(f"{n + ' n':>8}{n + ' p50 ms':>14}{n + ' p90 ms':>14}"
                                    for n in runs))  # fmt: skip
    for turn in turns:
        line = f"{turn:>5}"
        for r in runs.values():
            c = r.summary.classes["turn"].get(turn)
            if c is None:
                line += f"{'-':>8}{'-':>14}{'-':>14}"
                continue
            line += f"{c.requests_completed:>8}{_ms(c.ttft_ms.p50):>14}{_ms(c.ttft_ms.p90):>14}"
        print(line)
    for name, r in runs.items():
        s = r.summary
        print(f"{name}: completed {s.requests_completed}, failed {s.requests_failed}, TTFT p50 "
              f"{_ms(s.ttft_ms.p50)} ms, p99 {_ms(s.ttft_ms.p99)} ms")  # fmt: skip


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    if sys.argv[1:2] == ["--summarize-scenario"]:
        summarize_scenario(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--modes", nargs="+", default=["resident", "off", "host", "disk"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--random-weights", default=None, help="a preset, e.g. llama-3.2-1b")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--disk-contexts",
        type=int,
        nargs="*",
        default=None,
        help="run the disk modes at these contexts only",
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--disk-gib", type=float, default=16.0)
    parser.add_argument("--disk-root", default=None, help="where the disk tier's temp dir goes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    model, tok, path = load_model(args)
    vocab = model.config.vocab_size
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for mode in args.modes:
        try:
            rows += run_mode(model, tok, path, args, mode, vocab)
        except Exception as exc:  # noqa: BLE001 - keep the other modes' figures
            errors[mode] = repr(exc)
            print(f"mode {mode} failed: {exc!r}", file=sys.stderr, flush=True)
            gc.collect()
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"rows": rows, "errors": errors}, indent=1))
    resident = {r["context"]: r["ttft_s"] for r in rows if r["mode"] == "resident"}
    off = {r["context"]: r["ttft_s"] for r in rows if r["mode"] == "off"}
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}; model: {args.random_weights or 'smollm2-135m-instruct'}")
    first = {r["context"]: r["first_tokens"] for r in rows if r["mode"] == "resident"}
    print(
        f"{'mode':<12}{'context':>8}{'TTFT ms':>10}{'vs off':>9}{'vs resident':>13}"
        f"{'tier hit tok':>14}{'same token as resident':>24}"
    )
    for r in rows:
        c = r["context"]
        vs_off = f"{off[c] / r['ttft_s']:.2f}x" if c in off else "-"
        vs_res = f"{r['ttft_s'] / resident[c]:.2f}x" if c in resident else "-"
        same = str(r["first_tokens"] == first[c]) if c in first else "-"
        r["same_token_as_resident"] = same
        print(
            f"{r['mode']:<12}{c:>8}{r['ttft_s'] * 1e3:>10.1f}{vs_off:>9}{vs_res:>13}"
            f"{r['tier_hit_tokens']:>14}{same:>24}"
        )
    if args.json:
        data = {"device": name, "rows": rows, "errors": errors}
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()

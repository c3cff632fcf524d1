"""Tensor-parallel decode: step time, all-reduce time, offline throughput, greedy equality.

One command on N GPUs (NCCL; the script sets NCCL_NVLS_ENABLE=0):

    PYTHONPATH=src python benchmarks/tensor_parallel.py --tp 8 --out $OUT/tp.json

measures, for TP 1 (where the shape fits one device; the plain engine and the TP executor
run at size 1, whose difference is the executor's own overhead) and TP N, with random
weights of the Llama-3.1-8B and -70B shapes (bf16):
- decode step time at batch 1, 64 and 256 (128-token prompts, the median of the engine's
  steps once every request decodes; rank 0 sends each step's batch to the others first);
- the all-reduce of one layer's activations (`[batch, hidden]`, two per layer) on its own;
- offline throughput (`LLM.generate`, 256 requests, 128 in / 128 out);
- greedy equality of the plain engine and TP N (at `--tp 1`: the TP executor at size 1) on a
  small shape with the same weights.

On the CPU (`--device cpu --tp 2`, gloo) it runs the small shapes only, which gives the
per-step overhead of the process group and the step broadcast on this machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from deploylab.engine import LLM, EngineConfig, LLMEngine  # noqa: E402
from deploylab.engine.models.presets import get_preset  # noqa: E402
from deploylab.engine.sampling_params import SamplingParams  # noqa: E402

PROMPT_LEN = 128


def weight_bytes(shape: str, elem: int) -> int:
    c = get_preset(shape)
    per_layer = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    per_layer += 3 * c.hidden_size * c.intermediate_size
    embed = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    return (c.num_hidden_layers * per_layer + embed) * elem


def fits(shape: str, tp: int, device: str) -> bool:
    """Whether a rank's weights take under 75 % of one device (CPU: shapes under 1 GB)."""
    if device == "cpu":
        return weight_bytes(shape, 4) < 1024**3
    total = torch.cuda.get_device_properties(0).total_memory
    return weight_bytes(shape, 2) / tp < 0.75 * total


def engine_config(
    shape: str, tp: int, args: argparse.Namespace, seqs: int, backend: str | None = None
) -> EngineConfig:
    extra: dict[str, Any] = {"num_threads": 1} if args.device == "cpu" else {}
    return EngineConfig(
        distributed_executor_backend=backend,
        random_weights=shape,
        device=args.device,
        tensor_parallel_size=tp,
        max_num_seqs=seqs,
        max_num_batched_tokens=max(2048, seqs),
        max_model_len=1024,
        kv_cache_gib=1.0,
        gpu_memory_utilization=0.85,
        enable_prefix_caching=False,
        async_scheduling=False,  # TP steps synchronously: the plain engine alike
        **extra,
    )


def close(engine: LLMEngine) -> None:
    if engine.tp is not None:
        engine.tp.close()


def release() -> None:
    """Free a closed engine's device memory before the next one sizes its KV cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def decode_steps(engine: LLMEngine, batch: int, steps: int) -> dict[str, Any]:
    """Median/p90 step time (ms) once all `batch` requests decode."""
    gen = torch.Generator().manual_seed(batch)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    for i in range(batch):
        ids = torch.randint(3, vocab, (PROMPT_LEN,), generator=gen).tolist()
        engine.add_request(f"b{batch}-{i}", ids, params)
    times: list[float] = []
    while engine.has_unfinished_requests():
        decoding = (
            all(s.num_computed_tokens >= s.num_prompt_tokens for s in engine.scheduler.running)
            and not engine.scheduler.num_waiting
        )
        t0 = time.perf_counter()
        engine.step()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        if decoding and len(engine.scheduler.running) == batch:
            times.append((time.perf_counter() - t0) * 1e3)
    times = times[2:]  # first decode steps warm allocators and kernels
    return {
        "batch": batch,
        "steps": len(times),
        "step_ms_p50": round(statistics.median(times), 3) if times else None,
        "step_ms_p90": round(sorted(times)[int(0.9 * (len(times) - 1))], 3) if times else None,
    }


def throughput(shape: str, tp: int, args: argparse.Namespace) -> dict[str, Any]:
    n = args.throughput_requests
    backend = "mp" if tp > 1 else "uni"
    llm = LLM(llm_engine=LLMEngine(engine_config(shape, tp, args, min(n, 256), backend)))
    gen = torch.Generator().manual_seed(0)
    vocab = llm.llm_engine.model_config.vocab_size
    prompts = [torch.randint(3, vocab, (PROMPT_LEN,), generator=gen).tolist() for _ in range(n)]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[: min(4, n)], params)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t0
    close(llm.llm_engine)
    del llm
    release()
    tokens = sum(len(o.token_ids) for o in outs)
    return {"requests": n, "output_tokens": tokens, "seconds": round(elapsed, 3),
            "output_tokens_per_s": round(tokens / elapsed, 1)}  # fmt: skip


def _allreduce_rank(rank: int, world: int, port: int, device: str, shapes: list[tuple[int, int]],
                    iters: int, out: Any) -> None:  # fmt: skip
    from deploylab.engine.distributed.group import destroy_group, init_group

    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    torch.set_num_threads(1)
    init_group(rank, world, port, dev)
    import torch.distributed as dist

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for batch, hidden in shapes:
        t = torch.ones(batch, hidden, dtype=dtype, device=dev)
        for _ in range(5):
            dist.all_reduce(t)
        if device == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        if device == "cuda":
            torch.cuda.synchronize()
        us = (time.perf_counter() - t0) / iters * 1e6
        rows.append({"batch": batch, "hidden": hidden, "bytes": t.numel() * t.element_size(),
                     "all_reduce_us": round(us, 2)})  # fmt: skip
    if rank == 0:
        out.put(rows)
    destroy_group()


def allreduce_times(tp: int, args: argparse.Namespace, hiddens: list[int]) -> list[dict[str, Any]]:
    from deploylab.engine.distributed.group import free_port

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    shapes = [(b, h) for h in hiddens for b in args.batches]
    iters = 20 if args.device == "cpu" else 200
    mp.start_processes(_allreduce_rank, args=(tp, free_port(), args.device, shapes, iters, q),
                       nprocs=tp, start_method="spawn")  # fmt: skip
    rows: list[dict[str, Any]] = q.get()
    return rows


def save_small_model(directory: Path, shape: str) -> None:
    """A random model of `shape` as an HF folder, so TP 1 and TP N load the same weights."""
    from safetensors.torch import save_file

    from deploylab.engine.models.loader import init_random_model

    c = get_preset(shape)
    model = init_random_model(c, torch.float32, "cpu", seed=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
    if c.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"))
    hf = {
        "architectures": ["LlamaForCausalLM"], "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings, "torch_dtype": "float32",
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(hf))


def greedy_equality(tp: int, args: argparse.Namespace) -> dict[str, Any]:
    shape = "smollm2-135m"
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (5, 40, 130)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_small_model(Path(tmp), shape)
        for key, (size, backend) in enumerate(((1, "uni"), (tp, "mp"))):
            extra: dict[str, Any] = {"num_threads": 1} if args.device == "cpu" else {}
            config = EngineConfig(
                model=tmp, device=args.device, dtype="float32", tensor_parallel_size=size,
                distributed_executor_backend=backend, kv_cache_gib=0.1,
                gpu_memory_utilization=0.5, **extra,
            )  # fmt: skip
            engine = LLMEngine(config)
            outs[key] = [o.token_ids for o in LLM(llm_engine=engine).generate(prompts, params)]
            close(engine)
            del engine
            release()
    return {"shape": shape, "dtype": "float32", "plain_vs_tp": tp, "identical": outs[0] == outs[1],
            "tokens_compared": sum(len(o) for o in outs[0])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tp", type=int, default=max(1, torch.cuda.device_count()))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=24, help="decode steps per batch")
    parser.add_argument("--throughput-requests", type=int, default=None)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], help="phases: equality steps "
                        "allreduce throughput")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tensor_parallel.json"))
    args = parser.parse_args()
    cpu = args.device == "cpu"
    args.shapes = args.shapes or (["smollm2-135m"] if cpu else ["llama-3.1-8b", "llama-3.1-70b"])
    args.batches = args.batches or ([1, 8, 32] if cpu else [1, 64, 256])
    args.throughput_requests = args.throughput_requests or (16 if cpu else 256)
    if cpu:
        args.output_len = min(args.output_len, 32)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if not cpu else "cpu",
        "gpus": torch.cuda.device_count(), "tp": args.tp, "date": datetime.now(UTC).isoformat(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average": os.getloadavg(), "decode": [], "allreduce": [], "throughput": [],
    }  # fmt: skip

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))

    if "equality" not in args.skip:
        res["equality"] = greedy_equality(args.tp, args)
        print("greedy equality:", res["equality"], flush=True)
        save()
    # (TP size, executor): the plain engine; the TP executor at size 1 (its overhead alone:
    # step message, collectives over one rank); TP N.
    runs = [(1, "uni"), (1, "mp")] + ([(args.tp, "mp")] if args.tp > 1 else [])
    for shape in args.shapes:
        for tp, backend in runs:
            if not fits(shape, tp, args.device):
                print(f"{shape} TP {tp}: does not fit, skipped", flush=True)
                continue
            label = {"shape": shape, "tp": tp, "executor": backend}
            if "steps" not in args.skip:
                engine = LLMEngine(engine_config(shape, tp, args, max(args.batches), backend))
                for batch in args.batches:
                    row = {**label, **decode_steps(engine, batch, args.steps)}
                    res["decode"].append(row)
                    print(row, flush=True)
                    save()
                close(engine)
                del engine
                release()
            if "throughput" not in args.skip and (tp, backend) != (1, "mp"):
                row = {**label, **throughput(shape, tp, args)}
                res["throughput"].append(row)
                print(row, flush=True)
                save()
    if "allreduce" not in args.skip:
        hiddens = sorted({get_preset(s).hidden_size for s in args.shapes})
        res["allreduce"] = allreduce_times(args.tp, args, hiddens)
        for row in res["allreduce"]:
            print(row, flush=True)
    save()


if __name__ == "__main__":
    main()

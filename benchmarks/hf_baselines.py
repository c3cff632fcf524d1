"""transformers baselines for `offline_throughput.py` beyond plain batched `generate`.

- `run_hf_static`: batched `generate` with a static KV cache, which transformers compiles
  with `torch.compile` (timed on a second pass, so compilation is not counted);
- `run_hf_continuous`: transformers' own continuous batching (`init_continuous_batching`,
  paged KV cache), each request with its own `max_new_tokens`, configured for the workload
  (see `generate_continuous`); works with transformers 5.17 and 5.24.
Both return the benchmark's `Result`, counting only the requested output tokens.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _result(name: str, seconds: float, reqs: list[tuple[list[int], int]]) -> Any:
    from offline_throughput import Result  # type: ignore[import-not-found]

    expected = sum(n for _, n in reqs)
    return Result(name, seconds, expected, expected + sum(len(p) for p, _ in reqs))


def run_hf_static(hf: Any, reqs: list[tuple[list[int], int]], batch_size: int) -> Any:
    """Left-padded batches through `generate(cache_implementation="static")`; the first pass
    compiles (shapes are per batch), the second is timed."""
    from offline_throughput import run_hf  # type: ignore[import-not-found]

    hf.generation_config.cache_implementation = "static"
    try:
        t0 = time.perf_counter()
        run_hf(hf, reqs, batch_size)
        print(f"transformers static: compile pass {time.perf_counter() - t0:.1f} s", flush=True)
        timed = run_hf(hf, reqs, batch_size)
    finally:
        hf.generation_config.cache_implementation = None
    return _result("hf-static-compiled", timed.seconds, reqs)


# tokens per KV block: transformers' default, and the size its flash decode path wants
_PAGE = 256
# room left for the warm-up and the final stop; a step that takes longer is itself the news
_STOP_TIMEOUT_S = 30.0


def continuous_batching_available(hf: Any) -> bool:
    """Whether the installed transformers has the continuous batching manager."""
    return hasattr(hf, "init_continuous_batching")


def run_hf_continuous(
    hf: Any,
    reqs: list[tuple[list[int], int]],
    max_requests_per_batch: int | None = None,
    **settings: Any,
) -> Any:
    """transformers' continuous batching (the machinery behind `generate_batch`), timed from the
    first `add_request` to the last finished request; `settings` are `generate_continuous`'s."""
    seconds, _ = generate_continuous(hf, reqs, max_requests_per_batch, **settings)
    result = _result("hf continuous", seconds, reqs)
    if max_requests_per_batch:
        result.name += f" {max_requests_per_batch} seqs"
    return result


def generate_continuous(
    hf: Any,
    reqs: list[tuple[list[int], int]],
    max_requests_per_batch: int | None = None,
    max_batch_tokens: int | None = None,
    options: dict[str, Any] | None = None,
    deadline_s: float = 300.0,
) -> tuple[float, list[list[int]]]:
    """Greedy, EOS off, each request with its own `max_new_tokens` (transformers honours it per
    request: `RequestState.max_new_tokens`); returns the timed seconds and each request's tokens.

    Set up for this workload rather than left to defaults:
    - attention: flash-attn if the package is installed, else SDPA over the paged cache
      ("paged|sdpa" in 5.17, "sdpa" with `auto_switch_to_flash=False` from 5.2x, so it never
      goes looking for hub kernels). SDPA packs the batch into one sequence with a dense
      block-diagonal mask, so its attention costs (query tokens) x (all keys of the batch):
      `max_requests_per_batch` is the knob that trades that against steps;
    - a KV cache sized for every request's full length (no waiting, no re-queueing), capped
      to 80% of free GPU memory; prefix sharing off (random prompts share nothing);
    - `max_batch_tokens` and `max_requests_per_batch` default to transformers' own choices
      (8192 tokens; every request); `options` sets any other `ContinuousBatchingConfig` field
      (e.g. `use_cuda_graph`, `default_compile_level`, `scheduler_type`);
    - a few short requests run before the clock starts (CUDA graph capture, if enabled, and
      compilation happen in transformers' own `warmup`, also untimed).
    Past `deadline_s`, or if the generation thread dies, the manager is hard-stopped and the
    RuntimeError says how far it got."""
    from transformers import GenerationConfig

    if not continuous_batching_available(hf):
        import transformers

        raise RuntimeError(f"transformers {transformers.__version__} has no continuous batching")
    config_cls, fields = _config_class()
    attn, overrides = _cb_attention(fields)
    size_field = "page_size" if "page_size" in fields else "block_size"
    tokens = max_batch_tokens or 8192
    settings: dict[str, Any] = {
        size_field: _PAGE,
        "num_blocks": _num_blocks(hf, reqs, tokens, attn),
        "max_batch_tokens": tokens,
        "max_requests_per_batch": max_requests_per_batch,
        "allow_block_sharing": False,
        **overrides,
    }
    for key, value in (options or {}).items():
        if key not in fields:
            from deploylab.errors import UsageError

            raise UsageError(
                f"unknown continuous batching option {key!r}; this transformers knows: "
                + ", ".join(sorted(fields))
            )
        settings[key] = value
    gen = GenerationConfig(
        do_sample=False, max_new_tokens=max(n for _, n in reqs), eos_token_id=-1, pad_token_id=0
    )
    original_attn = hf.config._attn_implementation
    hf.set_attn_implementation(attn)
    manager = None
    try:
        manager = hf.init_continuous_batching(
            generation_config=gen,
            continuous_batching_config=config_cls(**settings),
            workload_hints=_hints(reqs),
        )
        manager.warmup()
        print(f"transformers continuous: {_describe_config(manager, attn)}", flush=True)
        manager.start()
        warm = [(p[:16], 4) for p, _ in reqs[:4]]
        _collect(manager, _submit(manager, warm, "warm"), warm, _STOP_TIMEOUT_S * 4)
        device = next(hf.parameters()).device
        _sync(device)
        start = time.perf_counter()
        ids = _submit(manager, reqs, "r")
        outputs = _collect(manager, ids, reqs, deadline_s)
        _sync(device)
        seconds = time.perf_counter() - start
        _stop(manager, hard=False)
    except BaseException:
        if manager is not None and not _stop(manager, hard=True):
            print("transformers continuous: the generation thread did not stop", flush=True)
        raise
    finally:
        hf.set_attn_implementation(original_attn)
    _check_counts(outputs, reqs)
    return seconds, outputs


def _config_class() -> tuple[type, set[str]]:
    import dataclasses

    from transformers import ContinuousBatchingConfig

    return ContinuousBatchingConfig, {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}


def _cb_attention(fields: set[str]) -> tuple[str, dict[str, Any]]:
    """The attention implementation to run with, spelled for this transformers version."""
    from transformers.utils import is_flash_attn_2_available

    name = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    if "auto_switch_to_flash" in fields:  # newer: plain names, paged cache implied
        return name, {"auto_switch_to_flash": False}
    return f"paged|{name}", {}


def _hints(reqs: list[tuple[list[int], int]]) -> Any:
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:
        return None
    return WorkloadHints(
        max_prompt_length=max(len(p) for p, _ in reqs),
        max_generated_length=max(n for _, n in reqs),
        num_requests=len(reqs),
    )


def _num_blocks(hf: Any, reqs: list[tuple[list[int], int]], tokens: int, attn: str) -> int:
    """Blocks for every request's prompt + output at once (+1 each: transformers allocates one
    block ahead), capped so cache, dense mask and peaks fit in 80% of free GPU memory."""
    blocks = sum(-(-(len(p) + n) // _PAGE) + 1 for p, n in reqs)
    device = next(hf.parameters()).device
    if device.type != "cuda":
        return blocks
    c = hf.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    size = hf.dtype.itemsize
    # per cached token: K+V of every layer, the K+V read back and repeated to all query heads
    # for attention, and (SDPA/eager) one column of the dense mask per batch token
    per_token = 2 * c.num_key_value_heads * head_dim * size * c.num_hidden_layers
    per_token += 2 * c.num_attention_heads * head_dim * size + 16
    if "flash" not in attn:
        per_token += 2 * tokens * size
    fixed = tokens * (c.vocab_size * 4 + c.hidden_size * size)  # fp32 logits of a full batch
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    fit = max(int(0.8 * free - fixed) // (per_token * _PAGE), 1)
    if fit < blocks:
        print(
            f"transformers continuous: memory for {fit} of the {blocks} KV blocks the requests "
            "need; some will wait or be re-queued",
            flush=True,
        )
    return min(blocks, fit)


def _describe_config(manager: Any, attn: str) -> str:
    cfg = manager.continuous_batching_config
    processor = getattr(manager, "batch_processor", None)
    cache = getattr(processor, "cache", None)
    blocks = getattr(cache, "num_blocks", cfg.num_blocks)
    tokens = getattr(cache, "max_batch_tokens", cfg.max_batch_tokens)
    return (
        f"attention {attn}, {blocks} KV blocks of {_PAGE}, max batch tokens {tokens}, "
        f"max requests per batch {cfg.max_requests_per_batch}, CUDA graphs "
        f"{cfg.use_cuda_graph}, compile level {getattr(cfg, 'default_compile_level', 0)}, "
        f"async {cfg.use_async_batching}, scheduler {cfg.scheduler_type}"
    )


def _submit(manager: Any, reqs: list[tuple[list[int], int]], prefix: str) -> dict[str, int]:
    """Queue every request; returns request id -> its index in `reqs`."""
    ids = {}
    for i, (prompt, n) in enumerate(reqs):
        rid = f"{prefix}{i}"
        manager.add_request(input_ids=prompt, request_id=rid, max_new_tokens=n, eos_token_id=-1)
        ids[rid] = i
    return ids


def _collect(
    manager: Any, ids: dict[str, int], reqs: list[tuple[list[int], int]], deadline_s: float
) -> list[list[int]]:
    """Wait for every request in `ids`; the tokens in `reqs` order."""
    start = time.perf_counter()
    outputs: dict[str, list[int]] = {}
    while len(outputs) < len(ids):
        elapsed = time.perf_counter() - start
        if elapsed > deadline_s or not manager.is_running():
            done_tokens = sum(len(t) for t in outputs.values())
            late = elapsed > deadline_s
            why = f"deadline of {deadline_s:.0f} s passed" if late else "thread ended"
            raise RuntimeError(
                f"transformers continuous batching: {why} after {elapsed:.1f} s; "
                f"{len(outputs)}/{len(ids)} requests finished with {done_tokens} tokens "
                f"(of {sum(reqs[i][1] for i in ids.values())} asked); {_manager_state(manager)}"
            )
        out = manager.get_result(timeout=1)
        if out is None or not out.is_finished() or out.request_id not in ids:
            continue
        if out.error is not None:
            raise RuntimeError(f"transformers continuous: {out.request_id} failed: {out.error}")
        outputs[out.request_id] = list(out.generated_tokens)
    ordered: list[list[int]] = [[] for _ in ids]
    for rid, tokens in outputs.items():
        ordered[ids[rid]] = tokens
    return ordered


def _manager_state(manager: Any) -> str:
    """What the manager is doing, read from outside its thread (best effort)."""
    parts = [f"generation thread alive: {manager.is_running()}"]
    error = getattr(getattr(manager, "background_thread_status", None), "fatal_error", None)
    if error is not None:
        parts.append(f"fatal error: {error!r:.300}")
    processor = getattr(manager, "batch_processor", None)
    try:
        scheduler = processor.scheduler
        active = list(scheduler.active_requests.values())
        tokens = sum(len(s.generated_tokens) for s in active)
        parts.append(
            f"{len(active)} active ({tokens} tokens so far), "
            f"{len(scheduler.waiting_requests)} waiting, "
            f"{manager.input_queue.qsize()} not picked up"
        )
        cache = processor.cache
        if hasattr(cache, "get_num_free_blocks"):  # 5.17
            parts.append(f"{cache.get_num_free_blocks()}/{cache.num_blocks} KV blocks free")
        elif hasattr(cache, "compute_free_capacity"):  # 5.2x
            parts.append(f"{cache.compute_free_capacity(relative=True):.0%} of the KV cache free")
    except Exception as exc:  # the thread may be mutating these; the report must not fail
        parts.append(f"scheduler state unreadable ({exc!r:.100})")
    return "; ".join(parts)


def _stop(manager: Any, hard: bool) -> bool:
    """Stop the generation thread (hard: drop unfinished requests); True once it has ended."""
    import inspect

    kwargs: dict[str, Any] = {"block": True, "timeout": _STOP_TIMEOUT_S}
    if hard and "hard_stop" in inspect.signature(manager.stop).parameters:
        kwargs["hard_stop"] = True
    manager.stop(**kwargs)
    if manager.is_running():
        return False
    if hasattr(manager, "destroy"):
        manager.destroy()
    return True


def _check_counts(outputs: list[list[int]], reqs: list[tuple[list[int], int]]) -> None:
    counts = [(i, len(t), n) for i, (t, (_, n)) in enumerate(zip(outputs, reqs, strict=True))]
    wrong = [c for c in counts if c[1] != c[2]]
    if wrong:
        listed = ", ".join(f"#{i}: {got} of {n}" for i, got, n in wrong[:5])
        raise RuntimeError(
            f"transformers continuous: {len(wrong)} requests got the wrong token count ({listed})"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""A compiled single-sequence decode step for the CPU (`EngineConfig.cpu_compile`).

At batch 1 the CPU step is ~2,000 small torch ops driven from Python; the int4 matmuls are
only about a third of it (docs/benchmarks.md, issue 24). `CompiledDecode` runs the same model
layers for one token as one `torch.compile` graph (TorchInductor's C++ kernels fuse the norms,
RoPE, the cache write and gather, and the residual adds): the model's own modules are called,
so quantized projections, q/k norms and biases are whatever the model has; only the
attention is written here, over the sequence's blocks gathered from the paged cache.

Dynamo's guards on the model's ~300 modules cost ~1 ms a call; they are skipped
(`skip_guard_on_all_nn_modules_unsafe`), which is safe here because the engine never
replaces the model's modules or weight tensors while it runs. Compiling takes 1-3 min on a
2-core machine (30-40 s with Inductor's cache warm), so it happens at engine start; if it
fails the engine logs why and decodes eagerly. Like eager batch-1 steps it runs on one thread
(`cpu_threads.StepThreads`): alone on 2 cores two threads took 6.1 against 8.5 ms a step, but
serving, with the load generator on the same cores, two threads took 15.1 ms a token against
9.1 (llama.cpp likewise: 21.5 against 7.3 ms).
"""

from __future__ import annotations

import logging
import time
import types
from typing import Any

import torch
import torch.nn.functional as F

from deploylab.engine.cpu_threads import StepThreads
from deploylab.engine.kv_cache import KVCache
from deploylab.engine.models.llama import LlamaDecoderLayer, LlamaForCausalLM

logger = logging.getLogger(__name__)

# The graph's launcher in C++, not Python: ~0.5 ms less a step, ~2x the compile time (tests
# that only check tokens turn it off).
CPP_WRAPPER = True


class CompiledDecode:
    """One decode token of one sequence through a compiled graph; `run` returns its logits."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache) -> None:
        self.model = model
        self.layers = kv_cache.layers
        k0 = kv_cache.layers[0][0]
        self.kv_heads, self.num_blocks, self.block_size, self.head_dim = k0.shape
        self.decoder_layers: list[LlamaDecoderLayer] = list(model.model.layers)  # type: ignore[arg-type]
        options: dict[str, Any] = {
            "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
            "cpp_wrapper": CPP_WRAPPER,
        }
        forward = _own_code(self._forward)
        self._step = torch.compile(forward, dynamic=True, fullgraph=True, options=options)

    def _forward(
        self, ids: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, blocks: torch.Tensor,
        length: int,
    ) -> torch.Tensor:  # fmt: skip
        """Logits `[1, vocab]` for token `ids[0]` at position `pos[0]`, its keys and values
        written at cache row `slot[0]`, attending over the first `length` tokens of `blocks`
        (int64; a mask, not a slice, so no length gets a graph of its own)."""
        inner = self.model.model
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(pos, h.dtype)
        kvh, nb_all, bs, d = self.kv_heads, self.num_blocks, self.block_size, self.head_dim
        visible = torch.arange(blocks.shape[0] * bs) < length
        mask = torch.zeros(visible.shape, dtype=h.dtype).masked_fill(~visible, float("-inf"))
        mask = mask.view(1, 1, 1, -1)
        for layer, (k_cache, v_cache) in zip(self.decoder_layers, self.layers, strict=True):
            attn = layer.self_attn
            q, k, v = attn.project_qkv(layer.input_layernorm(h), cos, sin)
            k_cache.view(kvh, nb_all * bs, d).index_copy_(1, slot, k.transpose(0, 1))
            v_cache.view(kvh, nb_all * bs, d).index_copy_(1, slot, v.transpose(0, 1))
            keys = k_cache.index_select(1, blocks).reshape(1, kvh, -1, d)
            values = v_cache.index_select(1, blocks).reshape(1, kvh, -1, d)
            o = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0), keys, values, attn_mask=mask,
                scale=attn.scale, enable_gqa=True,
            )  # fmt: skip
            h = h + attn.o_proj(o.reshape(1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.compute_logits(inner.norm(h))

    def run(self, token: int, pos: int, table: list[int]) -> torch.Tensor:
        """Logits `[1, vocab]` (float32) of the sequence's next token."""
        bs = self.block_size
        blocks = table[: pos // bs + 1]
        if len(blocks) < 2:  # one graph for every length: no size-1 specialisation
            blocks = blocks * 2
        return self._step(
            torch.tensor([token]),
            torch.tensor([pos]),
            torch.tensor([table[pos // bs] * bs + pos % bs]),
            torch.tensor(blocks, dtype=torch.int64),
            pos + 1,
        )

    def warm_up(self, scratch_block: int, threads: StepThreads | None = None) -> float:
        """Compile (two calls: Dynamo makes the second one's sizes dynamic), writing only
        into `scratch_block`, with the thread count of a batch-1 step (`threads`: the
        runner's; Dynamo recompiles for another count); returns the seconds it took."""
        t0 = time.perf_counter()
        if threads is not None:
            threads.fit(1)
        try:
            with torch.inference_mode():
                for pos in (1, 2 * self.block_size + 3):
                    self.run(0, pos, [scratch_block] * (pos // self.block_size + 1))
        finally:
            if threads is not None:
                threads.restore()
        return time.perf_counter() - t0


def _own_code(method: Any) -> Any:
    """`method` bound to a copy of its function with a code object of its own. Dynamo keeps
    compiled graphs and their guards per code object, and these guards skip the modules, so
    two engines in one process sharing `_forward`'s code took each other's graph: a second
    engine whose LM head had another quantization failed its guards (AttributeError)."""
    fn = method.__func__
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{id(method.__self__):x}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def build_compiled_decode(
    model: Any, kv_cache: KVCache, threads: StepThreads | None = None
) -> CompiledDecode | None:
    """A warmed-up `CompiledDecode`, or None (logged) where compiling fails."""
    if not isinstance(model, LlamaForCausalLM):
        return None
    try:
        compiled = CompiledDecode(model, kv_cache)
        seconds = compiled.warm_up(kv_cache.num_blocks - 1, threads)
    except Exception as exc:  # noqa: BLE001 - no C++ compiler, an unsupported op: stay eager
        logger.warning("cpu_compile: compiling the decode step failed (%r); decoding eagerly", exc)
        return None
    logger.info("cpu_compile: decode step compiled in %.1f s", seconds)
    return compiled

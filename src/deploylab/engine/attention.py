"""Attention over the paged KV cache, driven by an explicit `AttentionMetadata` object.

The model runner builds one `AttentionMetadata` per step and passes it down through every
layer (no global context). A step's tokens are laid out decodes first (one token each), then
prefill chunks. Per layer, `paged_attention` writes the step's keys/values into the cache and
then attends:

- decodes, in groups of similar context length: each sequence's blocks are gathered into a
  padded `[B, kv_heads, L, d]` scratch buffer and one SDPA call per group runs with a length
  mask. The query heads of one KV head are laid along SDPA's query axis, so GQA needs no
  repeat. On the CPU, groups are sized so the gathered keys and values stay in cache.
- prefill chunks, one SDPA call each: a chunk that is the whole context uses the fresh
  keys/values with `is_causal`; a chunk after cached context gathers the sequence's blocks and
  uses an offset-causal mask.

Cache layout per layer: `[kv_heads, num_blocks, block_size, head_dim]`, so a gather of rows
`h * num_blocks + block` of the `[kv_heads * num_blocks, block_size * head_dim]` view lands
contiguous as `[B, kv_heads, L, head_dim]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from deploylab.engine.triton_prefill import PagedPrefillFn, PrefillBatch


class Workspace:
    """A grow-only scratch buffer; large fresh allocations cost page faults on every step."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._buf = torch.empty(0, dtype=dtype, device=device)

    def take(self, numel: int, offset: int = 0) -> torch.Tensor:
        """A flat view of `numel` elements starting at `offset` (grows the buffer if needed)."""
        if self._buf.numel() < offset + numel:
            self._buf = torch.empty(offset + numel, dtype=self.dtype, device=self.device)
        return self._buf[offset : offset + numel]


@dataclass
class PrefillChunk:
    """One sequence's prefill chunk inside the step's flattened token axis."""

    query_start: int
    query_len: int
    context_len: int  # cached tokens before this chunk + query_len
    # Rows of the flat `[kv_heads * num_blocks, block_size * head_dim]` cache view holding this
    # sequence's blocks, ordered (kv_head, block); None when the chunk is the whole context.
    gather_index: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [query_len, padded_context] bool, True = attend


@dataclass
class DecodeGroup:
    """Consecutive single-token rows `[start, start + count)` attended together."""

    start: int
    count: int
    # Rows of the flat cache view, ordered (sequence, kv_head, block), `count * kv_heads * nb`.
    gather_index: torch.Tensor
    mask: torch.Tensor  # [count, 1, 1, nb * block_size] bool, True = attend
    # The same mask as an additive float32 bias (0 / -inf), used on the CPU.
    bias: torch.Tensor | None = None


@dataclass
class AttentionMetadata:
    """Everything attention needs for one step; built once, shared by every layer."""

    num_tokens: int
    # Rows of the flat `[kv_heads * num_blocks * block_size, head_dim]` cache view to write the
    # step's keys/values to, ordered (kv_head, token).
    write_index: torch.Tensor
    num_decodes: int = 0  # single-token rows come first
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    # Alternative decode path (CUDA): a kernel reading the paged cache directly, given the
    # padded block tables `[num_decodes, max_blocks]` and context lengths (int32).
    decode_kernel: Callable[..., torch.Tensor] | None = None
    decode_tables: torch.Tensor | None = None
    decode_lens: torch.Tensor | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)
    # Alternative prefill path (CUDA): one kernel for every chunk, reading the paged cache.
    prefill_kernel: PagedPrefillFn | None = None
    prefill_batch: PrefillBatch | None = None
    workspace: Workspace | None = None
    # Set by the fused CUDA path, which stores the step's keys/values while applying RoPE.
    kv_written: bool = False
    # Per-row LoRA corrections (engine/lora `LoraBatch`): `lora(x, y, modules)` adds them to
    # `y`, the concatenated outputs of the projections `modules` for input `x`; None: none.
    lora: Callable[..., torch.Tensor] | None = None
    # Speculative verify chunks attended together (spec_decode/verify_attention.py, CPU path):
    # `verify(q, k_cache, v_cache, out, scale)` fills their rows of `out`; None: none.
    verify: Callable[..., None] | None = None


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: AttentionMetadata,
) -> None:
    """Store the step's keys/values `[T, kv_heads, d]` at their slots."""
    head_dim = k.shape[-1]
    k_rows = k_cache.view(-1, head_dim)
    v_rows = v_cache.view(-1, head_dim)
    k_rows.index_copy_(0, meta.write_index, k.transpose(0, 1).reshape(-1, head_dim))
    v_rows.index_copy_(0, meta.write_index, v.transpose(0, 1).reshape(-1, head_dim))


def _gather(
    cache: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows `index` of the `[kv_heads * num_blocks, block_size * d]` view, into `out` if given."""
    rows = cache.view(cache.shape[0] * cache.shape[1], -1)
    if out is None:
        return torch.index_select(rows, 0, index)
    return torch.index_select(rows, 0, index, out=out.view(index.numel(), rows.shape[1]))


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the block on one torch thread (the count before is restored after)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def decode_rows_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """CPU attention of single query tokens: q `[n, kv_heads, groups, d]`, k/v `[n, kv_heads,
    L, d]`, bias `[n, 1, 1, L]` (0 / -inf). One thread: PyTorch's CPU SDPA rounds differently
    on two threads, and rows must come out bit-identical whatever their batch, so that a
    speculative verify row equals the decode row it replaces (with int4 weights the
    activations are rounded to bfloat16, which turns 1e-7 differences into other tokens)."""
    with one_cpu_thread():
        if q.dtype == torch.float32:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        # PyTorch's CPU SDPA kernels are slow for a handful of half-precision query rows;
        # two matmuls with a float32 softmax are faster.
        scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale).add_(bias)
        return torch.matmul(scores.softmax(dim=-1).to(q.dtype), v)


def _decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: DecodeGroup, scale: float
) -> torch.Tensor:
    """One decode group: q `[n, kv_heads, groups, d]`, k/v `[n, kv_heads, L, d]`."""
    if q.device.type != "cpu" or group.bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scale)
    return decode_rows_attention(q, k, v, group.bias, scale)


def _chunk_after_context_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk: PrefillChunk,
    kv_heads: int,
    scale: float,
) -> torch.Tensor:
    """A prefill chunk after cached context, as lower-right-aligned causal attention over the
    exact context (flash kernel; an explicit mask would take cuDNN, which plans per shape
    at ~2.6 ms of CPU a call, measured on H100). q `[1, H, n, d]` -> `[n, H, d]`."""
    head_dim = q.shape[-1]
    ctx = chunk.context_len
    kc = k.view(1, kv_heads, -1, head_dim)[:, :, :ctx].contiguous()
    vc = v.view(1, kv_heads, -1, head_dim)[:, :, :ctx].contiguous()
    mask = causal_lower_right(chunk.query_len, ctx)
    oc = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=scale, enable_gqa=True)
    return oc.squeeze(0).transpose(0, 1)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Attention for a step's tokens. q `[T, H, d]`, k/v `[T, kv_heads, d]` -> `[T, H, d]`."""
    if not meta.kv_written:
        write_kv(k_cache, v_cache, k, v, meta)
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, block_size = k_cache.shape[0], k_cache.shape[2]
    groups = num_heads // kv_heads
    out = torch.empty_like(q)
    nd = meta.num_decodes
    if meta.decode_kernel is not None and nd:
        out[:nd] = meta.decode_kernel(
            q[:nd], k_cache, v_cache, meta.decode_tables, meta.decode_lens, scale
        )
    for group in meta.decode_groups:
        assert meta.workspace is not None
        s, n = group.start, group.count
        n_rows = group.gather_index.numel()
        length = n_rows // (n * kv_heads) * block_size
        numel = n_rows * block_size * head_dim
        kb = _gather(k_cache, group.gather_index, meta.workspace.take(numel))
        vb = _gather(v_cache, group.gather_index, meta.workspace.take(numel, numel))
        od = _decode_attention(
            q[s : s + n].view(n, kv_heads, groups, head_dim),
            kb.view(n, kv_heads, length, head_dim),
            vb.view(n, kv_heads, length, head_dim),
            group,
            scale,
        )
        out[s : s + n] = od.reshape(n, num_heads, head_dim)  # SDPA on CUDA may return strided
    if meta.verify is not None:
        meta.verify(q, k_cache, v_cache, out, scale)
    if meta.prefill_kernel is not None and meta.prefill_batch is not None:
        fresh = meta.prefill_batch.fresh and k.shape == (q.shape[0], kv_heads, head_dim)
        fresh_kv = (k, v) if fresh and k.stride() == v.stride() and k.stride(2) == 1 else None
        meta.prefill_kernel(q, k_cache, v_cache, meta.prefill_batch, scale, out, fresh_kv)
        return out
    for chunk in meta.prefills:
        s, n = chunk.query_start, chunk.query_len
        qc = q[s : s + n].transpose(0, 1).unsqueeze(0)
        if chunk.gather_index is None:
            kc = k[s : s + n].transpose(0, 1).unsqueeze(0)
            vc = v[s : s + n].transpose(0, 1).unsqueeze(0)
            oc = F.scaled_dot_product_attention(
                qc, kc, vc, is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            assert chunk.mask is not None
            n_rows = chunk.gather_index.numel()
            length = n_rows // kv_heads * block_size
            kc = _gather(k_cache, chunk.gather_index)
            vc = _gather(v_cache, chunk.gather_index)
            if q.is_cuda:
                out[s : s + n] = _chunk_after_context_cuda(qc, kc, vc, chunk, kv_heads, scale)
                continue
            oc = F.scaled_dot_product_attention(
                qc,
                kc.view(1, kv_heads, length, head_dim),
                vc.view(1, kv_heads, length, head_dim),
                attn_mask=chunk.mask,
                scale=scale,
                enable_gqa=True,
            )
        out[s : s + n] = oc.squeeze(0).transpose(0, 1)
    return out

"""Attention over the paged KV cache, driven by an explicit `AttentionMetadata` object.

The model runner builds one `AttentionMetadata` per step and passes it down through every
layer (no global context). A step's tokens are laid out decodes first (one token each), then
prefill chunks. Per layer, `paged_attention` writes the step's keys/values into the cache and
then attends:

- decodes, batched: each sequence's blocks are gathered into a padded `[B, kv_heads, L, d]`
  buffer (reused by all layers) and one SDPA call runs with a length mask. The query heads of
  one KV head are laid along SDPA's query axis, so GQA needs no repeat.
- prefill chunks, one SDPA call each: a chunk that is the whole context uses the fresh
  keys/values with `is_causal`; a chunk after cached context gathers the sequence's blocks and
  uses an offset-causal mask.

Cache layout per layer: `[kv_heads, num_blocks, block_size, head_dim]`, so a gather of rows
`h * num_blocks + block` of the `[kv_heads * num_blocks, block_size * head_dim]` view lands
contiguous as `[B, kv_heads, L, head_dim]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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
class AttentionMetadata:
    """Everything attention needs for one step; built once, shared by every layer."""

    num_tokens: int
    # Rows of the flat `[kv_heads * num_blocks * block_size, head_dim]` cache view to write the
    # step's keys/values to, ordered (kv_head, token).
    write_index: torch.Tensor
    num_decodes: int = 0
    decode_gather_index: torch.Tensor | None = None  # [num_decodes * kv_heads * max_blocks]
    decode_mask: torch.Tensor | None = None  # [num_decodes, 1, 1, max_blocks * block_size]
    prefills: list[PrefillChunk] = field(default_factory=list)
    workspace: Workspace | None = None


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
    write_kv(k_cache, v_cache, k, v, meta)
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, block_size = k_cache.shape[0], k_cache.shape[2]
    groups = num_heads // kv_heads
    out = torch.empty_like(q)
    nd = meta.num_decodes
    if nd:
        assert meta.decode_gather_index is not None and meta.decode_mask is not None
        assert meta.workspace is not None
        n_rows = meta.decode_gather_index.numel()
        length = n_rows // (nd * kv_heads) * block_size
        numel = n_rows * block_size * head_dim
        kb = _gather(k_cache, meta.decode_gather_index, meta.workspace.take(numel))
        vb = _gather(v_cache, meta.decode_gather_index, meta.workspace.take(numel, numel))
        qd = q[:nd].view(nd, kv_heads, groups, head_dim)
        od = F.scaled_dot_product_attention(
            qd,
            kb.view(nd, kv_heads, length, head_dim),
            vb.view(nd, kv_heads, length, head_dim),
            attn_mask=meta.decode_mask,
            scale=scale,
        )
        out[:nd] = od.view(nd, num_heads, head_dim)
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

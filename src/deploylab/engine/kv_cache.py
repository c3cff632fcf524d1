"""`KVCache`: the per-layer key/value tensors of the paged cache, and how many blocks fit."""

from __future__ import annotations

import logging

import torch

from deploylab.engine.models.config import LlamaConfig
from deploylab.errors import ConfigError

logger = logging.getLogger(__name__)

# Device memory left to activations, logits and the allocator's slack on CUDA.
CUDA_RESERVE_BYTES = 2 * 1024**3


def bytes_per_block(config: LlamaConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers (keys and values)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    return per_token * block_size * elem


def num_blocks_for(
    config: LlamaConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    kv_cache_gib: float,
    gpu_memory_utilization: float,
) -> int:
    """Blocks that fit: `kv_cache_gib` on CPU; on CUDA, `gpu_memory_utilization` of the
    device minus memory already in use (weights) and a working reserve."""
    per_block = bytes_per_block(config, block_size, dtype)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = int(total * gpu_memory_utilization) - (total - free) - CUDA_RESERVE_BYTES
        what = f"gpu_memory_utilization={gpu_memory_utilization}"
    else:
        budget = int(kv_cache_gib * 1024**3)
        what = f"kv_cache_gib={kv_cache_gib}"
    blocks = budget // per_block
    if blocks < 2:
        raise ConfigError(
            f"No room for a KV cache with {what} ({per_block} bytes per block); "
            "raise it or use a smaller model."
        )
    return int(blocks)


class KVCache:
    """Keys and values of every layer, each `[kv_heads, num_blocks, block_size, head_dim]`.

    Zero-initialised: attention reads padded slots under a mask, and garbage there could be
    NaN, which a mask does not cancel.
    """

    def __init__(
        self,
        config: LlamaConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (config.num_key_value_heads, num_blocks, block_size, config.head_dim)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(config.num_hidden_layers)
        ]
        logger.info(
            "KV cache: %d blocks x %d tokens (%.2f GiB)",
            num_blocks,
            block_size,
            bytes_per_block(config, block_size, dtype) * num_blocks / 1024**3,
        )

    @property
    def num_slots(self) -> int:
        """Tokens the cache holds."""
        return self.num_blocks * self.block_size

    def move_slots(self, src: list[int], dst: list[int]) -> None:
        """Copy single token slots src -> dst in every layer, in order (a token tree's kept
        path moves to the positions a chain would have used; dst[i] < src[i] and the
        sources ahead of a destination are never overwritten before they are read)."""
        if not src:
            return
        device = self.layers[0][0].device
        s = torch.tensor(src, dtype=torch.int64, device=device)
        d = torch.tensor(dst, dtype=torch.int64, device=device)
        for k, v in self.layers:
            for cache in (k, v):
                flat = cache.view(cache.shape[0], -1, cache.shape[-1])
                flat.index_copy_(1, d, flat.index_select(1, s))

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks src -> dst in every layer (copy-on-write after a fork)."""
        if not pairs:
            return
        device = self.layers[0][0].device
        src = torch.tensor([p[0] for p in pairs], device=device)
        dst = torch.tensor([p[1] for p in pairs], device=device)
        for k, v in self.layers:
            k[:, dst] = k[:, src]
            v[:, dst] = v[:, src]

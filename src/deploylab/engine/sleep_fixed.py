"""Sleep mode at fixed addresses: the weights and the KV cache each live in one `VirtualArena`
(engine/vmm.py) from the engine's start, so a sleep releases their physical memory and a wake
maps new memory at the same addresses, and the CUDA graphs captured at start replay as they
are (no re-capture on wake). vLLM's sleep mode does the same with its CuMem allocator.

The weights are moved into their arena right after loading (fused first on CUDA, so the fused
projections are what lives there), before the KV cache is sized; the KV cache right after it
is created, before anything takes views of it. Used when `EngineConfig.enable_sleep_mode`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from deploylab.engine.vmm import VirtualArena

logger = logging.getLogger(__name__)

ALIGN = 256  # bytes: each KV tensor starts at a multiple of this in its arena


class FixedAddresses:
    """The weights' and the KV cache's arenas of one engine, and the level-1 host copy."""

    def __init__(self, weights: VirtualArena) -> None:
        self.weights = weights
        self.kv: VirtualArena | None = None
        self.host: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        """True once both the weights and the KV cache live in arenas."""
        return self.kv is not None

    def release(self, level: int) -> int:
        """Sleep: copy the weights to host memory (level 1), then release both arenas.
        Returns the bytes copied."""
        assert self.kv is not None
        device = self.weights.device
        moved = 0
        if level == 1:
            pin = device.type == "cuda"
            self.host = torch.empty(self.weights.nbytes, dtype=torch.uint8, pin_memory=pin)
            self.host.copy_(self.weights.tensor, non_blocking=pin)
            if pin:
                torch.cuda.synchronize(device)
            moved = self.weights.nbytes
        self.weights.release()
        self.kv.release()
        return moved

    def start_copy_in(self) -> torch.cuda.Stream | None:
        """Wake, level 1: start copying the host copy into the (restored) weights' arena;
        on CUDA on a side stream, returned for `finish_copy_in`."""
        assert self.host is not None
        device = self.weights.device
        if device.type != "cuda":
            self.weights.tensor.copy_(self.host)
            return None
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self.weights.tensor.copy_(self.host, non_blocking=True)
        return stream

    def finish_copy_in(self, stream: torch.cuda.Stream | None) -> int:
        """Make the current stream wait for the copy, drop the host copy (after the copy
        ends); returns the bytes copied."""
        if stream is not None:
            stream.synchronize()
        self.host = None
        return self.weights.nbytes

    def zero_kv(self) -> None:
        """A fresh KV cache: zeros, as at start (attention reads masked slots)."""
        assert self.kv is not None
        self.kv.tensor.zero_()


def fix_weights(model: nn.Module, device: torch.device) -> FixedAddresses:
    """Move every weight of `model` into one arena (packed, each storage once); the tensors
    keep their identity. On CUDA the projections are fused first (as the runner would)."""
    from deploylab.engine.sleep import _bytes_of, _pack_layout, _weight_views

    fuse = getattr(model, "fuse_for_cuda", None)
    if device.type == "cuda" and callable(fuse):
        fuse()
    storages, nbytes = _pack_layout(model)
    views = _weight_views(model, storages)
    stash = _stash_if_tight(storages, nbytes, device)
    try:
        arena = VirtualArena(nbytes, device)
    except BaseException:
        if stash:  # put the weights back where they were
            for ptr, (storage, _) in storages.items():
                storage.resize_(stash[ptr].numel())
                _bytes_of(storage).copy_(stash[ptr])
        raise
    with torch.no_grad():
        for ptr, (storage, offset) in storages.items():
            src = stash[ptr] if stash else _bytes_of(storage)
            arena.tensor[offset : offset + src.numel()].copy_(src)
        target = arena.tensor.untyped_storage()
        for view in views:
            view.tensor.set_(target, view.offset, view.size, view.stride)
    del storages, stash
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return FixedAddresses(arena)


def _stash_if_tight(
    storages: dict[int, tuple[torch.UntypedStorage, int]], nbytes: int, device: torch.device
) -> dict[int, torch.Tensor] | None:
    """Where the device cannot hold the weights twice: copy them to host memory and free them
    on the device first (returns the host copies by storage pointer); else None."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if free > nbytes + (1 << 30):
        return None
    from deploylab.engine.sleep import _bytes_of

    stash = {ptr: _bytes_of(s).cpu() for ptr, (s, _) in storages.items()}
    for storage, _ in storages.values():
        storage.resize_(0)
    torch.cuda.empty_cache()
    return stash


def fix_kv(fixed: FixedAddresses, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Move the KV cache's tensors (zeros, fresh from `KVCache`) into one arena."""
    device = layers[0][0].device
    tensors = [t for pair in layers for t in pair]
    sizes = [-(-t.numel() * t.element_size() // ALIGN) * ALIGN for t in tensors]
    for t in tensors:  # free the old cache first: the device may not hold it twice
        t.untyped_storage().resize_(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        arena = VirtualArena(sum(sizes), device)
    except BaseException:
        for t in tensors:
            t.untyped_storage().resize_(t.numel() * t.element_size())
            t.zero_()
        raise
    arena.tensor.zero_()
    target = arena.tensor.untyped_storage()
    offset = 0
    with torch.no_grad():
        for t, size in zip(tensors, sizes, strict=True):
            t.set_(target, offset // t.element_size(), t.size(), t.stride())
            offset += size
    fixed.kv = arena
    logger.info(
        "sleep mode: weights (%.2f GiB) and KV cache (%.2f GiB) at fixed addresses",
        fixed.weights.nbytes / 1024**3,
        arena.nbytes / 1024**3,
    )

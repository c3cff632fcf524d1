"""Layer-by-layer loading of the KV tiers (`EngineConfig.kv_offload_layerwise`): a step's
tier copies run layer after layer on side streams, and the forward pass's layer l waits only
for layer l's copies.

`LayerWaits` replaces `KVCache.layers` (a list of (key, value) pairs, so every reader works
unchanged): the first access to layer l after `arm` makes the current stream wait for layer
l's event, just before the model launches that layer's kernels, so the copies of later layers
overlap the compute of earlier ones. `flush` waits for whatever was not reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, SupportsIndex, overload

import torch

from deploylab.engine.kv_cache import KVCache
from deploylab.engine.kv_tiers.manager import KVTiers, _copy_runs

KVPair = tuple[torch.Tensor, torch.Tensor]


class LayerWaits(list[KVPair]):
    """The per-layer (key, value) pairs, with an optional pending CUDA event per layer."""

    def __init__(self, layers: list[KVPair]) -> None:
        super().__init__(layers)
        self._events: list[Any] = [None] * len(layers)
        self._pending = 0

    def arm(self, events: list[Any]) -> None:
        """Layer i's next access waits for `events[i]` (one per layer)."""
        self.flush()
        self._events = list(events)
        self._pending = sum(e is not None for e in events)

    def flush(self) -> None:
        """Make the current stream wait for every pending event (none stays behind)."""
        for i in range(len(self)):
            self._wait(i)

    def _wait(self, i: int) -> None:
        event = self._events[i]
        if event is None or torch.cuda.is_current_stream_capturing():
            return
        self._events[i] = None
        self._pending -= 1
        torch.cuda.current_stream().wait_event(event)

    @overload
    def __getitem__(self, i: SupportsIndex) -> KVPair: ...

    @overload
    def __getitem__(self, i: slice) -> list[KVPair]: ...

    def __getitem__(self, i: SupportsIndex | slice) -> KVPair | list[KVPair]:
        if self._pending:
            if isinstance(i, slice):
                for j in range(*i.indices(len(self))):
                    self._wait(j)
            else:
                self._wait(range(len(self))[i])
        return super().__getitem__(i)

    def __iter__(self) -> Iterator[KVPair]:
        if not self._pending:
            return super().__iter__()
        return self._waiting_iter()

    def _waiting_iter(self) -> Iterator[KVPair]:
        for i in range(len(self)):
            self._wait(i)  # when the model asks for layer i, not before
            yield list.__getitem__(self, i)


class LayerwiseKVTiers(KVTiers):
    """`KVTiers` whose copies run layer by layer (host pool stored layer-major): on CUDA,
    copies out and in of layer l each end with an event, and the forward pass's layer l
    waits only for layer l's (through `LayerWaits`), so later layers' copies overlap the
    compute of earlier ones."""

    LAYER_MAJOR = True

    def __init__(self, kv_cache: KVCache, *args: Any, **kwargs: Any) -> None:
        super().__init__(kv_cache, *args, **kwargs)
        if not isinstance(kv_cache.layers, LayerWaits):
            kv_cache.layers = LayerWaits(kv_cache.layers)

    def transfer(self) -> None:
        """Copy this step's evicted blocks out and its hits in, layer by layer: out (device
        -> host) on one side stream, in (host -> device) on the other, layer l in after
        layer l out (it may overwrite those blocks); the forward pass waits per layer."""
        layers = self.kv.layers
        if isinstance(layers, LayerWaits):
            layers.flush()  # the last step's copies, whatever its forward did not reach
        offloads, loads = self._offloads, self._loads
        self._offloads, self._loads, self._found = [], [], []
        cap = self.host.capacity
        if self.disk is None:
            offloads = offloads[-cap:]  # the last ones: a conversation's head blocks
        if self._stream is not None and (offloads or loads):
            self._start = torch.cuda.Event()
            self._start.record(torch.cuda.current_stream(self.device))
        out_events: list[Any] = [None] * len(layers)
        for start in range(0, len(offloads), cap):  # a host pool's worth at a time
            part = self._offload(offloads[start : start + cap])
            if part:
                out_events = self._run_layers(
                    lambda layer, p=part: self._copy_out_layer(p, layer),  # type: ignore[misc]
                    self._stream,
                )
                self._event = out_events[-1]
        self.host.pinned.clear()
        if not loads:  # no prefill to overlap (a decode step may replay a CUDA graph, which
            for event in out_events:  # reads no `LayerWaits`): wait for the copies now
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
            return
        events = self._run_layers(
            lambda layer: self._copy_in_layer(loads, layer), self._in_stream, out_events
        )
        if isinstance(layers, LayerWaits) and self._stream is not None:
            layers.arm(events)

    def _run_layers(
        self, copies: Callable[[int], None], stream: Any, deps: list[Any] | None = None
    ) -> list[Any]:
        """Run `copies(layer)` for every layer: on the CPU now; on CUDA on `stream` after
        this step's start (and layer l after `deps[l]`). Returns each layer's event."""
        n = len(self.kv.layers)
        if stream is None:
            for layer in range(n):
                copies(layer)
            return [None] * n
        stream.wait_event(self._start)  # earlier steps have written / read these blocks
        events = []
        with torch.cuda.stream(stream):
            for layer in range(n):
                if deps is not None and deps[layer] is not None:
                    stream.wait_event(deps[layer])
                copies(layer)
                done = torch.cuda.Event()
                done.record(stream)
                events.append(done)
        return events

    def _copy_out_layer(self, offloads: list[tuple[int, int]], layer: int) -> None:
        """Layer `layer` of device blocks -> host slots, for (block, slot) pairs."""
        k, v = list.__getitem__(self.kv.layers, layer)  # no wait: the copies run first
        idx = _device_index([b for b, _ in offloads], self.device)
        gathered = torch.stack((k.index_select(1, idx), v.index_select(1, idx)))
        staging = gathered.permute(2, 0, 1, 3, 4).contiguous()  # [n, 2, kv_heads, block, dim]
        _copy_runs(self.host.data[layer], [s for _, s in offloads], staging, to_pool=True)
        if layer == 0:
            self.counters["host"].stored_bytes += len(offloads) * self.block_bytes

    def _copy_in_layer(self, loads: list[tuple[int, torch.Tensor | int]], layer: int) -> None:
        """Layer `layer` of host slots (ints) or disk-read blocks (tensors) -> device blocks."""
        dev = self.device
        staging = torch.empty((len(loads), *self.block_shape[1:]), dtype=self.dtype, device=dev)
        slots = [(i, src) for i, (_, src) in enumerate(loads) if isinstance(src, int)]
        if slots:
            rows = [i for i, _ in slots]
            pool = self.host.data[layer]
            _copy_runs(pool, [s for _, s in slots], staging, to_pool=False, rows=rows)
        for i, (_, src) in enumerate(loads):
            if not isinstance(src, int):
                staging[i].copy_(src[layer], non_blocking=True)
        idx = _device_index([b for b, _ in loads], dev)
        k, v = list.__getitem__(self.kv.layers, layer)
        k.index_copy_(1, idx, staging[:, 0].transpose(0, 1))
        v.index_copy_(1, idx, staging[:, 1].transpose(0, 1))

    def _measure_host_bandwidth(self) -> None:
        """Time one copy of layer 0 of a few pool slots to the device."""
        layers = len(self.kv.layers)
        src = self.host.data[0, : min(self.host.capacity, 8 * layers)]
        dst = torch.empty(src.shape, dtype=self.dtype, device=self.device)
        seconds = 1e-9
        for _ in range(2):  # the first copy warms up the path
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
        nbytes = src.numel() * src.element_size()
        self.cost.bandwidth["host"] = nbytes / max(seconds, 1e-9)


def _device_index(blocks: list[int], device: torch.device) -> torch.Tensor:
    """Block numbers as an int64 tensor on `device` (through pinned memory on CUDA, so the
    host thread does not wait for the stream)."""
    idx = torch.tensor(blocks, dtype=torch.int64)
    if device.type != "cuda":
        return idx
    return idx.pin_memory().to(device, non_blocking=True)

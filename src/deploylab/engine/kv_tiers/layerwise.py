"""Layer-by-layer loading of the KV tiers (`EngineConfig.kv_offload_layerwise`): a step's
tier copies run layer after layer on side streams, and the forward pass's layer l waits only
for layer l's copies.

`LayerWaits` replaces `KVCache.layers` (a list of (key, value) pairs, so every reader works
unchanged): the first access to layer l after `arm` makes the current stream wait for layer
l's event, just before the model launches that layer's kernels, so the copies of later layers
overlap the compute of earlier ones. `flush` waits for whatever was not reached.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, SupportsIndex, overload

import torch

from deploylab.engine.kv_cache import KVCache
from deploylab.engine.kv_tiers.manager import KVTiers, apply_copy_runs, copy_runs_plan

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
    """`KVTiers` whose copies run layer by layer (host pool stored layer-major). On CUDA the
    evicted blocks are first gathered on the device (all layers, one pass) so the copies in
    need not wait for the copies out; then the copies out (staging -> host) run on one side
    stream while the copies in (host -> device, one event per layer) run on the other, and
    the forward pass's layer l waits only for layer l's (through `LayerWaits`)."""

    LAYER_MAJOR = True
    STAGING_BYTES = 256 * 1024**2  # per gather buffer (two alternate; more blocks: groups)

    def __init__(self, kv_cache: KVCache, *args: Any, **kwargs: Any) -> None:
        super().__init__(kv_cache, *args, **kwargs)
        if not isinstance(kv_cache.layers, LayerWaits):
            kv_cache.layers = LayerWaits(kv_cache.layers)

    def transfer(self) -> None:
        """Copy this step's evicted blocks out and its hits in, layer by layer (see the class);
        the host thread only enqueues, the forward pass waits per layer on the device."""
        layers = self.kv.layers
        if isinstance(layers, LayerWaits):
            layers.flush()  # the last step's copies, whatever its forward did not reach
        offloads, loads = self._step_offloads(bool(self._loads)), self._loads
        self._offloads, self._loads, self._found = [], [], []
        cap = self.host.capacity
        if self.disk is None:
            offloads = offloads[-cap:]  # the last ones: a conversation's head blocks
        cuda = self._stream is not None
        filled = self._event  # earlier steps' copies out: this step's loads read those slots
        if cuda and (offloads or loads):
            self._start = torch.cuda.Event()
            self._start.record(torch.cuda.current_stream(self.device))
            _wait(self._in_stream, self._start)  # earlier steps wrote / read these blocks
        for start in range(0, len(offloads), cap):  # a host pool's worth at a time
            part = self._offload(offloads[start : start + cap])
            if part:
                self._gather_out(sorted(part, key=lambda p: p[1]))  # rising slots: one run each
        self.host.pinned.clear()
        main = torch.cuda.current_stream(self.device) if cuda else None
        if not loads:
            if main is not None and offloads:  # the gathers read the blocks this step writes
                _wait(main, _record(self._in_stream))
            return
        loads = sorted(loads, key=lambda p: p[1] if isinstance(p[1], int) else -1)
        events = self._copy_in_layers(loads, filled)
        if isinstance(layers, LayerWaits) and cuda:
            layers.arm(events)

    def _gather_out(self, offloads: list[tuple[int, int]]) -> None:
        """Device blocks -> host slots for (block, slot) pairs: gathered into a device
        staging buffer on the copy-in stream (in groups of `STAGING_BYTES`, two buffers
        alternating), then copied to the host on the copy-out stream."""
        n_layers = len(self.kv.layers)
        group = max(1, self.STAGING_BYTES // self.block_bytes)
        self.counters["host"].stored_bytes += len(offloads) * self.block_bytes
        buffers: list[tuple[torch.Tensor, Any]] = []
        for g, first in enumerate(range(0, len(offloads), group)):
            part = offloads[first : first + group]
            if len(buffers) < 2:
                shape = (n_layers, len(part), *self.block_shape[1:])
                with _on(self._in_stream):
                    staging = torch.empty(shape, dtype=self.dtype, device=self.device)
                if self._stream is not None:  # not reused before the copies out are done
                    staging.record_stream(self._stream)
                buffers.append((staging, None))
            staging, reused = buffers[g % 2]
            staging = staging[:, : len(part)]
            with _on(self._in_stream):
                _wait(self._in_stream, reused)  # its last group has reached the host
                idx = _device_index([b for b, _ in part], self.device)
                for layer, (k, v) in enumerate(list.__iter__(self.kv.layers)):
                    staging[layer, :, 0].copy_(k.index_select(1, idx).transpose(0, 1))
                    staging[layer, :, 1].copy_(v.index_select(1, idx).transpose(0, 1))
            gathered = _record(self._in_stream)
            runs = copy_runs_plan([s for _, s in part])
            with _on(self._stream):
                _wait(self._stream, gathered)
                for layer in range(n_layers):
                    apply_copy_runs(self.host.data[layer], staging[layer], runs, to_pool=True)
            done = _record(self._stream)
            buffers[g % 2] = (buffers[g % 2][0], done)
            self._event = done

    def _copy_in_layers(
        self, loads: list[tuple[int, torch.Tensor | int]], filled: Any
    ) -> list[Any]:
        """Host slots (ints) or disk-read blocks (tensors) -> device blocks, layer by layer on
        the copy-in stream, after the gathers of this step's copies out and after `filled`
        (the event of the earlier steps' copies out; never this step's: a slot a load reads
        is never one a copy out of the same step writes). Each layer's event (None: CPU)."""
        dev = self.device
        slots = [(i, src) for i, (_, src) in enumerate(loads) if isinstance(src, int)]
        runs = copy_runs_plan([s for _, s in slots], [i for i, _ in slots])
        disk = [(i, src) for i, (_, src) in enumerate(loads) if not isinstance(src, int)]
        events = []
        with _on(self._in_stream):
            if slots:
                _wait(self._in_stream, filled)
            idx = _device_index([b for b, _ in loads], dev)
            staging = torch.empty((len(loads), *self.block_shape[1:]), dtype=self.dtype, device=dev)
            for layer, (k, v) in enumerate(list.__iter__(self.kv.layers)):
                apply_copy_runs(self.host.data[layer], staging, runs, to_pool=False)
                for i, src in disk:
                    staging[i].copy_(src[layer], non_blocking=True)
                k.index_copy_(1, idx, staging[:, 0].transpose(0, 1))
                v.index_copy_(1, idx, staging[:, 1].transpose(0, 1))
                events.append(_record(self._in_stream))
        return events

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


def _on(stream: Any) -> Any:
    """`torch.cuda.stream(stream)`, or nothing to enter on the CPU (`stream` None)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _record(stream: Any) -> Any:
    """An event recorded on `stream` now (None on the CPU)."""
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _wait(stream: Any, event: Any) -> None:
    """`stream` waits for `event` (nothing when either is None: the CPU, no event)."""
    if stream is not None and event is not None:
        stream.wait_event(event)


def _device_index(blocks: list[int], device: torch.device) -> torch.Tensor:
    """Block numbers as an int64 tensor on `device` (through pinned memory on CUDA, so the
    host thread does not wait for the stream)."""
    idx = torch.tensor(blocks, dtype=torch.int64)
    if device.type != "cuda":
        return idx
    return idx.pin_memory().to(device, non_blocking=True)

"""Layer-by-layer waits on the KV cache: a step's tier copies run layer after layer on side
streams, and the forward pass's layer l waits only for layer l's copies.

`LayerWaits` replaces `KVCache.layers` (a list of (key, value) pairs, so every reader works
unchanged): the first access to layer l after `arm` makes the current stream wait for layer
l's event, just before the model launches that layer's kernels, so the copies of later layers
overlap the compute of earlier ones. `flush` waits for whatever was not reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, SupportsIndex, overload

import torch

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

"""`DiskWriter`: the disk tier's writes on a background thread, so that spilling host-tier
entries to disk never holds up the engine's step; blocks still queued are readable."""

from __future__ import annotations

import queue
import threading

import torch

from deploylab.engine.kv_tiers.disk import DiskStore


class DiskWriter:
    """A `DiskStore` behind a write queue of at most `max_pending_bytes` (past it a block is
    dropped, not written: the disk is slower than the evictions)."""

    def __init__(self, store: DiskStore, max_pending_bytes: int) -> None:
        self.store = store
        self.capacity_bytes = store.capacity_bytes
        self.max_pending_bytes = max_pending_bytes
        self.written_bytes = 0  # data bytes of the blocks written
        self.dropped = 0  # blocks not queued because the queue was full
        self._lock = threading.Lock()  # guards the store and `_pending`
        self._pending: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}
        self._pending_bytes = 0
        self._queue: queue.Queue[int] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="kv-disk-writer", daemon=True)
        self._thread.start()

    @property
    def used_bytes(self) -> int:
        """Bytes of the block files on disk."""
        return self.store.used_bytes

    @property
    def errors(self) -> int:
        """Files that could not be read or written."""
        return self.store.errors

    def contains(self, h: int) -> bool:
        """True when a block for hash `h` is queued or on disk."""
        with self._lock:
            return h in self._pending or self.store.contains(h)

    def read(self, h: int, tokens: tuple[int, ...]) -> torch.Tensor | None:
        """The block for `h` holding `tokens` (from the queue or a checked file), else None."""
        with self._lock:
            item = self._pending.get(h)
            if item is not None:
                return item[1] if item[0] == tokens else None
            return self.store.read(h, tokens)

    def write(self, h: int, tokens: tuple[int, ...], data: torch.Tensor) -> bool:
        """Queue a copy of one block for writing; False when the queue is full."""
        nbytes = data.numel() * data.element_size()
        with self._lock:
            if self._pending_bytes + nbytes > self.max_pending_bytes or h in self._pending:
                self.dropped += h not in self._pending
                return False
            self._pending[h] = (tokens, data.clone())
            self._pending_bytes += nbytes
        self._queue.put(h)
        return True

    def flush(self) -> None:
        """Wait until every queued block is written (or has failed)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            h = self._queue.get()
            try:
                with self._lock:
                    tokens, data = self._pending[h]
                    if self.store.write(h, tokens, data):
                        self.written_bytes += data.numel() * data.element_size()
                    del self._pending[h]
                    self._pending_bytes -= data.numel() * data.element_size()
            finally:
                self._queue.task_done()

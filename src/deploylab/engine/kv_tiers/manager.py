"""`KVTiers`: write-back of evicted prefix-cache blocks to host memory (and disk), and their
copy back into device blocks when a later prompt's prefix hits them.

The block manager calls `on_evict` when it reuses a cached block, `lookup` after a device
prefix-cache miss and `load` once the admitted sequence holds device blocks for the hits; the
engine calls `transfer` after each `schedule` (before the forward pass writes any block) and
`observe_prefill` after each step. Blocks are keyed by the block manager's own chained hash,
whatever goes into it (token ids; with multi-LoRA, the adapter too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from deploylab.engine.kv_cache import KVCache
from deploylab.engine.kv_tiers.cost import CostModel
from deploylab.engine.kv_tiers.disk import DiskStore
from deploylab.engine.kv_tiers.host import HostPool
from deploylab.engine.kv_tiers.writer import DiskWriter

LAYOUT_VERSION = 1  # bump when the block layout on disk changes
CHUNK = 64  # blocks per copy chunk (on CUDA, out- and in-copies of chunks overlap)


@dataclass(frozen=True)
class TierStats:
    """Counters of one tier (tokens and bytes are totals since start)."""

    tier: str
    hit_tokens: int
    stored_bytes: int  # written to this tier (device -> host, host -> disk)
    loaded_bytes: int  # copied back from this tier to the device
    used_bytes: int
    capacity_bytes: int
    errors: int


@dataclass
class _Counters:
    hit_tokens: int = 0
    stored_bytes: int = 0
    loaded_bytes: int = 0


class KVTiers:
    """The host tier (a `HostPool`), the optional disk tier and the transfers between them.
    Copies on CUDA in chunks of blocks, all done before the forward pass (see
    `layerwise.LayerwiseKVTiers` for copies layer by layer)."""

    LAYER_MAJOR = False  # the host pool's layout (`HostPool.data`)
    AHEAD_BLOCKS = 512  # most blocks written ahead per step

    def __init__(
        self,
        kv_cache: KVCache,
        host_bytes: int,
        disk_dir: str | None = None,
        disk_bytes: int = 0,
        identity: str = "",
        policy: str = "auto",
        write_ahead: bool = False,
    ) -> None:
        self.kv = kv_cache
        self.write_ahead = write_ahead
        # Full cached blocks not yet on the host (write-ahead): block -> (hash, tokens).
        self._ahead: dict[int, tuple[int, tuple[int, ...]]] = {}
        k0 = kv_cache.layers[0][0]
        self.device, self.dtype = k0.device, k0.dtype
        kvh, _, bs, hd = k0.shape
        self.block_shape = (len(kv_cache.layers), 2, kvh, bs, hd)
        self.block_size = bs
        self.block_bytes = k0.element_size() * len(kv_cache.layers) * 2 * kvh * bs * hd
        cuda = self.device.type == "cuda"
        self.host = HostPool(
            max(host_bytes // self.block_bytes, 1),
            self.block_shape,
            self.dtype,
            pin=cuda,
            layer_major=self.LAYER_MAJOR,
        )
        identity = f"{identity}|shape={self.block_shape}|dtype={self.dtype}|v{LAYOUT_VERSION}"
        self.disk: DiskWriter | None = None
        if disk_dir:  # writes on a thread; queued: a host pool's worth, or up to 2 GiB
            queued = max(host_bytes, min(disk_bytes, 2 * 1024**3))
            self.disk = DiskWriter(DiskStore(Path(disk_dir), identity, disk_bytes), queued)
        self.cost = CostModel(self.block_bytes, bs, policy)
        self.counters = {"host": _Counters(), "disk": _Counters()}
        self.external_queries = 0  # prompt tokens looked up here (device cache missed)
        self.external_hits = 0  # of which were copied back
        self._offloads: list[tuple[int, int, tuple[int, ...]]] = []  # block, hash, tokens
        self._loads: list[tuple[int, torch.Tensor | int]] = []  # block, host slot or data
        self._found: list[tuple[int, torch.Tensor | None]] = []  # last lookup: hash, disk data
        self._stream = torch.cuda.Stream(self.device) if cuda else None  # copies out
        self._in_stream = torch.cuda.Stream(self.device) if cuda else None  # copies in
        self._start: Any = None  # event: the main stream's work before this step's copies
        self._event: torch.cuda.Event | None = None  # the last transfer's copies
        self._measure_host_bandwidth()

    # ---- block manager hooks -----------------------------------------------------------
    def on_evict(self, block: int, h: int | None, tokens: tuple[int, ...] | None) -> None:
        """A cached device block is being reused: keep its contents (copied in `transfer`,
        unless written ahead already)."""
        self._ahead.pop(block, None)
        if h is not None and tokens is not None:
            self._offloads.append((block, h, tokens))

    def on_cached(self, block: int, h: int, tokens: tuple[int, ...]) -> None:
        """A computed full block entered the prefix cache: with write-ahead, queue its copy
        to the host (the step's forward that wrote it is already on the stream)."""
        if self.write_ahead:
            self._ahead[block] = (h, tokens)

    def on_uncache(self, block: int) -> None:
        """A block left the prefix cache without an eviction (dropped): forget it."""
        self._ahead.pop(block, None)

    def _step_offloads(self, loads: bool) -> list[tuple[int, int, tuple[int, ...]]]:
        """This step's evicted blocks, plus up to `AHEAD_BLOCKS` written ahead when the step
        copies nothing in (the link is then free; a return's copies in never wait for them)."""
        offloads = self._offloads
        if self._ahead and not loads:
            take = list(islice(self._ahead.items(), self.AHEAD_BLOCKS))
            for block, _ in take:
                del self._ahead[block]
            offloads = [(b, h, t) for b, (h, t) in take] + offloads
        return offloads

    def lookup(
        self, hashes: list[int], tokens_of: Callable[[int], tuple[int, ...]], first: int, end: int
    ) -> int:
        """How many blocks from `first` (up to `end`) a tier holds and should copy back."""
        self._found = []
        host_worth = self.cost.worth_loading("host")  # unchanged in the loop (disk's may)
        for i in range(first, end):
            h, tokens = hashes[i], tokens_of(i)
            data = None
            if self.host.get(h, tokens) is not None:
                tier = "host"
                if not host_worth:
                    break
            elif self.disk is not None and self.disk.contains(h):
                tier = "disk"
                if not self.cost.worth_loading(tier):
                    break
            else:
                break
            if self.disk is not None and tier == "disk":
                t0 = time.perf_counter()
                data = self.disk.read(h, tokens)  # checked now, so a bad file is a miss
                if data is None:
                    break
                self.cost.observe_copy("disk", self.block_bytes, time.perf_counter() - t0)
            else:
                self.host.pinned.add(h)
            self._found.append((h, data))
        return len(self._found)

    def load(self, blocks: list[int], queried_tokens: int) -> None:
        """Fill `blocks` (the device blocks for the last `lookup`'s hits) in `transfer`."""
        bs = self.block_size
        self.external_queries += queried_tokens
        self.external_hits += len(blocks) * bs
        entries, loads = self.host.entries, self._loads
        from_host = 0
        for block, (h, data) in zip(blocks, self._found, strict=True):
            if data is None:
                from_host += 1
                loads.append((block, entries[h].slot))
            else:
                loads.append((block, data))
        for tier, n in (("host", from_host), ("disk", len(blocks) - from_host)):
            self.counters[tier].hit_tokens += n * bs
            self.counters[tier].loaded_bytes += n * self.block_bytes
        self._found = []

    # ---- engine hooks ------------------------------------------------------------------
    def transfer(self) -> None:
        """Copy this step's evicted blocks out and its hits in, before the forward pass.

        On CUDA the copies out and in run on two side streams in chunks of `CHUNK` blocks, so
        the two directions of the PCIe link overlap; a chunk copied in waits only for the
        chunks copying out the device blocks it overwrites, and the main stream waits for
        all of them (on the device: the host thread goes on).
        """
        offloads, loads = self._step_offloads(bool(self._loads)), self._loads
        self._offloads, self._loads, self._found = [], [], []
        cap = self.host.capacity
        if self.disk is None:
            # More evictions than slots: keep the last ones (a conversation's head blocks,
            # freed last), since later blocks are useless without them.
            offloads = offloads[-cap:]
        if self._stream is not None and (offloads or loads):
            self._start = torch.cuda.Event()
            self._start.record(torch.cuda.current_stream(self.device))
        copied_out: dict[int, Any] = {}  # device block -> event after its copy out
        for start in range(0, len(offloads), cap):  # a host pool's worth at a time
            part = self._offload(offloads[start : start + cap])
            for i in range(0, len(part), CHUNK):
                chunk = part[i : i + CHUNK]
                event = self._run(lambda c=chunk: self._copy_out(c), self._stream)  # type: ignore[misc]
                self._event = event
                copied_out.update((b, event) for b, _ in chunk)
        self.host.pinned.clear()
        for i in range(0, len(loads), CHUNK):
            chunk_in = loads[i : i + CHUNK]
            deps = [copied_out[b] for b, _ in chunk_in if b in copied_out]
            self._run(lambda c=chunk_in: self._copy_in(c), self._in_stream, deps)  # type: ignore[misc]

    def _run(self, copies: Callable[[], None], stream: Any, deps: list[Any] | None = None) -> Any:
        """Run `copies`: on the CPU now; on CUDA on `stream` after this step's start and
        `deps` (events), and make the main stream wait for it. Returns its event."""
        if stream is None:
            copies()
            return None
        stream.wait_event(self._start)  # earlier steps have written / read these blocks
        for event in dict.fromkeys(deps or ()):
            stream.wait_event(event)
        with torch.cuda.stream(stream):
            copies()
            done = torch.cuda.Event()
            done.record(stream)
        torch.cuda.current_stream(self.device).wait_event(done)
        return done

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """Learn the prefill rate from a finished step (for the cost model)."""
        self.cost.observe_prefill(tokens, seconds)

    def stats(self) -> tuple[TierStats, ...]:
        """Per-tier counters for `EngineStats`."""
        host, c = self.host, self.counters["host"]
        cap = host.capacity * self.block_bytes
        used = len(host) * self.block_bytes
        out = [TierStats("host", c.hit_tokens, c.stored_bytes, c.loaded_bytes, used, cap, 0)]
        disk = self.disk
        if disk is not None:
            c = self.counters["disk"]
            out.append(
                TierStats("disk", c.hit_tokens, disk.written_bytes, c.loaded_bytes,
                          disk.used_bytes, disk.capacity_bytes, disk.errors)
            )  # fmt: skip
        return tuple(out)

    def stats_fields(self) -> dict[str, Any]:
        """`EngineStats` fields of the tiers."""
        return {
            "external_prefix_cache_queries": self.external_queries,
            "external_prefix_cache_hits": self.external_hits,
            "kv_tiers": self.stats(),
        }

    # ---- copies ------------------------------------------------------------------------
    def _offload(self, offloads: list[tuple[int, int, tuple[int, ...]]]) -> list[tuple[int, int]]:
        """Host slots for evicted blocks (spilling LRU entries to disk): (block, slot) pairs."""
        host = self.host
        kept = []
        fresh: set[int] = set()  # not victims before their data is copied
        for block, h, tokens in offloads:
            if host.get(h, tokens) is not None:
                continue  # already there: write-back copies a block once
            if h in host.entries:
                host.remove(h)  # same hash, other tokens: keep the newer block
            if not self._make_room(fresh):
                continue  # every entry is pinned by this step's loads: drop the block
            slot = host.add(h, tokens)
            assert slot is not None
            fresh.add(h)
            kept.append((block, slot))
        return kept

    def _make_room(self, fresh: set[int]) -> bool:
        """A free host slot, evicting (and spilling to disk) the LRU entry if needed."""
        host = self.host
        if len(host) < host.capacity:
            return True
        victim = host.victim(fresh)
        if victim is None:
            return False
        h, entry = victim
        if self.disk is not None and not self.disk.contains(h):
            if self._event is not None:
                self._event.synchronize()  # the slot's data has arrived
            self.disk.write(h, entry.tokens, host.block(entry.slot))
        host.remove(h)
        return True

    def _copy_out(self, offloads: list[tuple[int, int]]) -> None:
        """Device blocks -> host slots, for (block, slot) pairs."""
        idx = torch.tensor([b for b, _ in offloads], device=self.device)
        gathered = torch.stack(
            [
                torch.stack((k.index_select(1, idx), v.index_select(1, idx)))
                for k, v in self.kv.layers
            ]
        ).permute(3, 0, 1, 2, 4, 5)  # [n, layers, 2, kv_heads, block, dim]
        _copy_runs(self.host.data, [s for _, s in offloads], gathered.contiguous(), to_pool=True)
        self.counters["host"].stored_bytes += len(offloads) * self.block_bytes

    def _copy_in(self, loads: list[tuple[int, torch.Tensor | int]]) -> None:
        """Host slots (ints) or disk-read blocks (tensors) -> device blocks."""
        dev = self.device
        staging = torch.empty((len(loads), *self.block_shape), dtype=self.dtype, device=dev)
        slots = [(i, src) for i, (_, src) in enumerate(loads) if isinstance(src, int)]
        if slots:
            _copy_runs(
                self.host.data,
                [s for _, s in slots],
                staging,
                to_pool=False,
                rows=[i for i, _ in slots],
            )
        for i, (_, src) in enumerate(loads):
            if not isinstance(src, int):
                staging[i].copy_(src, non_blocking=True)
        idx = torch.tensor([b for b, _ in loads], device=dev)
        for layer, (k, v) in enumerate(self.kv.layers):
            k.index_copy_(1, idx, staging[:, layer, 0].transpose(0, 1))
            v.index_copy_(1, idx, staging[:, layer, 1].transpose(0, 1))

    def _measure_host_bandwidth(self) -> None:
        """Time one copy of a few pool slots to the device (the host tier's bandwidth)."""
        n = min(self.host.capacity, 8)
        dst = torch.empty((n, *self.block_shape), dtype=self.dtype, device=self.device)
        for _ in range(2):  # the first copy warms up the path
            if self._stream is not None:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            dst.copy_(self.host.data[:n], non_blocking=True)
            if self._stream is not None:
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
        self.cost.bandwidth["host"] = n * self.block_bytes / max(seconds, 1e-9)


# (first pool slot, first staging row, length, reversed): one copy per run
CopyRun = tuple[int, int, int, bool]


def copy_runs_plan(slots: list[int], rows: list[int] | None = None) -> list[CopyRun]:
    """The runs of consecutive pool slots (rising or falling: a sequence's blocks are evicted
    tail first, so its slots often fall) whose staging rows are consecutive too. Computed
    once per step and applied to every layer: Python over ~1,000 slots per layer was ~5 ms
    of a 16k-token return's host time on the H100."""
    rows = rows if rows is not None else list(range(len(slots)))
    runs: list[CopyRun] = []
    start = 0
    while start < len(slots):
        end = start + 1
        step = slots[end] - slots[start] if end < len(slots) else 1
        if step not in (1, -1):
            step = 1
        while (
            end < len(slots)
            and slots[end] == slots[end - 1] + step
            and rows[end] == rows[end - 1] + 1
        ):
            end += 1
        lo = slots[start] if step == 1 else slots[end - 1]
        runs.append((lo, rows[start], end - start, step == -1))
        start = end
    return runs


def apply_copy_runs(
    pool: torch.Tensor, staging: torch.Tensor, runs: list[CopyRun], to_pool: bool
) -> None:
    """Copy staging rows to/from pool slots, one copy per run of `copy_runs_plan`."""
    for lo, row, n, falling in runs:
        p = pool[lo : lo + n]
        r = staging[row : row + n]
        if to_pool:
            p.copy_(r.flip(0) if falling else r, non_blocking=True)
        elif not falling:
            r.copy_(p, non_blocking=True)
        else:
            r.copy_(p.to(r.device, non_blocking=True).flip(0), non_blocking=True)


def _copy_runs(
    pool: torch.Tensor,
    slots: list[int],
    staging: torch.Tensor,
    to_pool: bool,
    rows: list[int] | None = None,
) -> None:
    """Copy staging rows to/from pool slots, one copy per run of consecutive slots."""
    apply_copy_runs(pool, staging, copy_runs_plan(slots, rows), to_pool)

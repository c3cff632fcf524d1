"""Engine sleep and wake (vLLM's sleep mode): free an idle engine's device memory, keep it.

Level 1 copies the weights into one contiguous host buffer (pinned on CUDA) and frees them
and the KV cache on the device; level 2 frees them without a copy and reloads the weights
from the checkpoint (or re-draws the same random weights) on wake. Tensor objects stay where
they are: on sleep every tensor on the weights (parameters, tied and fused ones) is pointed
at an empty storage, which frees the weights; on wake all of them are pointed into one new
buffer that holds every weight, so the wake is one allocation and one host->device copy
(on a side stream), and the model runner sees the same tensors. The KV cache keeps its
tensors too (storages resized to zero and back), is re-allocated at its old size (no
profiling) and zeroed; the prefix cache is emptied; CUDA graphs are dropped on sleep and
captured again on wake (their buffers' addresses change).

With `EngineConfig.enable_sleep_mode` the weights and the KV cache live at fixed addresses
from the start (engine/sleep_fixed.py): a sleep releases their physical memory, a wake maps
new memory at the same addresses, and the CUDA graphs are kept (no re-capture).

Call only from the engine's own thread, with no request in flight (`AsyncEngine.call`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deploylab.engine.backref import EngineBackRef
from deploylab.engine.cpu_linear import prepack_linears, prepack_supported, unpack_linears
from deploylab.engine.sleep_fixed import FixedAddresses, fix_kv, fix_weights
from deploylab.engine.spec_decode.config import cuda_graph_rows
from deploylab.errors import ConfigError, InvalidRequestError

logger = logging.getLogger(__name__)


@dataclass
class SleepReport:
    """What one sleep or wake did: level, seconds taken, bytes copied between host and device."""

    action: str  # "sleep" or "wake_up"
    level: int
    seconds: float
    bytes_moved: int
    weights_seconds: float = 0.0  # part of a wake spent bringing the weights back
    alloc_seconds: float = 0.0  # of which allocating their device buffer
    graphs_seconds: float = 0.0  # part of a wake spent re-capturing CUDA graphs
    # CUDA, fixed addresses: device seconds from the wake's start until the weights' copy
    # and the KV cache's zeroing ended (they run side by side; None elsewhere).
    copy_seconds: float | None = None
    zero_seconds: float | None = None


@dataclass
class _View:
    """A tensor on the weights and where it sits in the packed layout (in its elements)."""

    tensor: torch.Tensor
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class EngineSleeper:
    """Sleep/wake state of one `LLMEngine` (weights' storages, the host copy, the level)."""

    engine = EngineBackRef()  # weak: no engine <-> helper cycle

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.level = 0  # 0: awake
        # True: freed device memory goes back to the driver (other processes can use it).
        # False: it stays in PyTorch's caching allocator, where the next wake of any model of
        # this process finds it without a cudaMalloc (faster wakes, same process only).
        self.release_memory = True
        self._views: list[_View] = []  # every tensor on the weights, while asleep
        self._nbytes = 0  # size of the packed weights
        self._host: torch.Tensor | None = None
        self.fixed: FixedAddresses | None = None  # the fixed-address arenas (sleep mode)

    def fix_weights(self) -> bool:
        """Move the weights to fixed addresses (call before the KV cache is sized); False
        (a warning logged) where that is not possible: sleep then moves them."""
        engine = self.engine
        try:
            self.fixed = fix_weights(self._model(), engine.device)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - any failure: the moving path still works
            logger.warning("sleep mode: weights not at fixed addresses (%s); a wake will "
                           "re-capture CUDA graphs", exc)  # fmt: skip
            return False
        return True

    def fix_kv(self) -> bool:
        """Move the fresh KV cache to fixed addresses (before anything takes views of it)."""
        if self.fixed is None:
            return False
        try:
            fix_kv(self.fixed, self.engine.kv_cache.layers)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - any failure: the moving path still works
            logger.warning("sleep mode: KV cache not at fixed addresses (%s)", exc)
            self.fixed = None  # the weights' arena lives on in their tensors: sleep moves it
            return False
        return True

    @property
    def fixed_addresses(self) -> bool:
        """True when a wake keeps every address (weights and KV cache in arenas)."""
        return self.fixed is not None and self.fixed.ready

    @property
    def is_sleeping(self) -> bool:
        """True between `sleep` and `wake_up`."""
        return self.level > 0

    def weight_bytes(self) -> int:
        """Bytes of the model's weights (each shared storage counted once)."""
        if self.fixed_addresses:
            assert self.fixed is not None
            return 0 if self.is_sleeping else self.fixed.weights.nbytes
        return sum(s.nbytes() for s in _weight_storages(self._model()))

    def kv_bytes(self) -> int:
        """Bytes the KV cache holds now (0 while asleep)."""
        if self.fixed_addresses:
            assert self.fixed is not None and self.fixed.kv is not None
            return 0 if self.is_sleeping else self.fixed.kv.nbytes
        kv = self.engine.kv_cache  # type: ignore[attr-defined]
        return sum(
            k.untyped_storage().nbytes() + v.untyped_storage().nbytes() for k, v in kv.layers
        )

    def host_bytes(self) -> int:
        """Bytes of the level-1 host copy (0 unless asleep at level 1)."""
        if self.fixed is not None and self.fixed.host is not None:
            return int(self.fixed.host.numel())
        return 0 if self._host is None else int(self._host.numel())

    def _model(self) -> nn.Module:
        model: nn.Module = self.engine.model  # type: ignore[attr-defined]
        return model

    def sleep(self, level: int = 1) -> SleepReport:
        """Free the weights (level 1: after a copy to host memory) and the KV cache."""
        if level not in (1, 2):
            raise InvalidRequestError(f"Sleep level must be 1 or 2, got {level}.", param="level")
        engine = self.engine
        if self.is_sleeping:
            return SleepReport("sleep", self.level, 0.0, 0)
        if engine.has_unfinished_requests():  # type: ignore[attr-defined]
            raise ConfigError("Cannot sleep an engine with requests in flight; wait for them.")
        start = time.perf_counter()
        if self.fixed_addresses:
            return self._sleep_fixed(level, start)
        device = engine.device  # type: ignore[attr-defined]
        model = self._model()
        unpack_linears(model)  # packed CPU copies would keep the old weights alive
        had_graphs = engine.runner.graphs is not None  # type: ignore[attr-defined]
        engine.runner.graphs = None  # type: ignore[attr-defined]
        engine.block_manager.evict_cached()  # type: ignore[attr-defined]
        storages, self._nbytes = _pack_layout(model)
        self._views = _weight_views(model, storages)
        moved = 0
        if level == 1:
            self._host = _copy_out(storages, self._nbytes, device)
            moved = self._nbytes
        empty = torch.UntypedStorage(0, device=device)
        with torch.no_grad():
            for view in self._views:
                view.tensor.set_(empty)  # the last reference to a weight storage goes: freed
        del storages
        for k, v in engine.kv_cache.layers:  # type: ignore[attr-defined]
            k.untyped_storage().resize_(0)
            v.untyped_storage().resize_(0)
        engine.runner.workspace._buf = torch.empty(0, dtype=engine.dtype, device=device)  # type: ignore[attr-defined]
        if device.type == "cuda" and self.release_memory:
            if had_graphs:
                gc.collect()  # captured graphs may sit in reference cycles with their pools
            torch.cuda.empty_cache()
        self.level = level
        return SleepReport("sleep", level, time.perf_counter() - start, moved)

    def wake_up(self) -> SleepReport:
        """Bring the weights back (host copy or checkpoint), re-allocate the KV cache."""
        level = self.level
        if not level:
            return SleepReport("wake_up", 0, 0.0, 0)
        if self.fixed_addresses:
            return self._wake_fixed(level)
        engine = self.engine
        device = engine.device  # type: ignore[attr-defined]
        start = time.perf_counter()
        arena = torch.empty(self._nbytes, dtype=torch.uint8, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        alloc_seconds = time.perf_counter() - start
        if level == 1:
            assert self._host is not None
            _copy_in(arena, self._host, device)
            self._host, moved = None, self._nbytes
        with torch.no_grad():
            for view in self._views:  # all weights in one buffer: one allocation, one copy
                view.tensor.set_(arena.untyped_storage(), view.offset, view.size, view.stride)
        self._views = []
        if level == 2:
            moved = _reload_weights(engine, self._model())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        weights_seconds = time.perf_counter() - start
        kv = engine.kv_cache  # type: ignore[attr-defined]
        for k, v in kv.layers:
            for t in (k, v):
                t.untyped_storage().resize_(t.numel() * t.element_size())
                t.zero_()
        model = self._model()
        if prepack_supported(device, engine.dtype):  # type: ignore[attr-defined]
            prepack_linears(model)
        config = engine.config  # type: ignore[attr-defined]
        graphs_start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            graphs_start = time.perf_counter()
            if config.cuda_graphs:
                rows = cuda_graph_rows(config.max_num_seqs, config.speculative_config)
                engine.runner.enable_cuda_graphs(rows, engine.max_model_len)  # type: ignore[attr-defined]
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        self.level = 0
        return SleepReport(
            "wake_up", level, end - start, moved, weights_seconds, alloc_seconds, end - graphs_start
        )

    def _sleep_fixed(self, level: int, start: float) -> SleepReport:
        """Sleep at fixed addresses: host copy (level 1), physical memory released; the
        tensors and the CUDA graphs stay."""
        engine = self.engine
        device = engine.device  # type: ignore[attr-defined]
        assert self.fixed is not None
        unpack_linears(self._model())
        engine.block_manager.evict_cached()  # type: ignore[attr-defined]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        moved = self.fixed.release(level)
        engine.runner.workspace._buf = torch.empty(0, dtype=engine.dtype, device=device)  # type: ignore[attr-defined]
        if device.type == "cuda" and self.release_memory:
            torch.cuda.empty_cache()
        self.level = level
        return SleepReport("sleep", level, time.perf_counter() - start, moved)

    def _wake_fixed(self, level: int) -> SleepReport:
        """Wake at fixed addresses: new memory mapped where the old was, the weights copied
        (level 1, on a side stream while the KV cache is mapped and zeroed) or reloaded
        (level 2) in place; the CUDA graphs are kept."""
        engine = self.engine
        device = engine.device  # type: ignore[attr-defined]
        fixed = self.fixed
        assert fixed is not None and fixed.kv is not None
        start = time.perf_counter()
        fixed.weights.restore()
        alloc_seconds = time.perf_counter() - start
        marks = _Marks(device)
        copy = fixed.start_copy_in() if level == 1 else None
        if copy is not None:
            marks.mark("copy", copy)
        kv_start = time.perf_counter()
        fixed.kv.restore()
        alloc_seconds += time.perf_counter() - kv_start
        fixed.zero_kv()
        marks.mark("zero")
        if level == 1:
            moved = fixed.finish_copy_in(copy)
        else:
            moved = _reload_weights(engine, self._model())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        weights_seconds = time.perf_counter() - start
        if prepack_supported(device, engine.dtype):  # type: ignore[attr-defined]
            prepack_linears(self._model())
        self.level = 0
        end = time.perf_counter()
        report = SleepReport("wake_up", level, end - start, moved, weights_seconds, alloc_seconds)
        report.copy_seconds, report.zero_seconds = marks.seconds("copy"), marks.seconds("zero")
        return report


class _Marks:
    """CUDA events timing the phases of a wake on the device (nothing on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: dict[str, Any] = {}
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()

    def mark(self, name: str, stream: Any = None) -> None:
        """An event at the end of what is queued on `stream` (default: the current one)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream)
            self.events[name] = event

    def seconds(self, name: str) -> float | None:
        """Device seconds from the start to mark `name` (after a synchronize), or None."""
        event = self.events.get(name)
        return None if event is None else self.start.elapsed_time(event) / 1e3


def _copy_out(
    storages: dict[int, tuple[torch.UntypedStorage, int]], nbytes: int, device: torch.device
) -> torch.Tensor:
    """Weight storages -> one host buffer (pinned on CUDA) at their packed offsets."""
    pin = device.type == "cuda"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    for storage, offset in storages.values():
        host[offset : offset + storage.nbytes()].copy_(_bytes_of(storage), non_blocking=pin)
    if pin:
        torch.cuda.synchronize(device)
    return host


def _copy_in(arena: torch.Tensor, host: torch.Tensor, device: torch.device) -> None:
    """Host buffer -> device buffer, one copy; on CUDA on a side stream, then wait for it."""
    if device.type != "cuda":
        arena.copy_(host)
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        arena.copy_(host, non_blocking=True)
    stream.synchronize()


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    """A flat uint8 tensor over the whole storage."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _module_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    """Every tensor a module of `model` holds: parameters, buffers, plain tensor attributes."""
    for module in model.modules():
        yield from (p for p in module._parameters.values() if p is not None)
        yield from (b for b in module._buffers.values() if b is not None)
        yield from (v for v in vars(module).values() if isinstance(v, torch.Tensor))


def _weight_storages(model: nn.Module) -> list[torch.UntypedStorage]:
    """The distinct storages behind the model's parameters (tied and fused ones once)."""
    seen: dict[int, torch.UntypedStorage] = {}
    for p in model.parameters():
        s = p.untyped_storage()
        seen.setdefault(s.data_ptr(), s)
    return list(seen.values())


def _pack_layout(model: nn.Module) -> tuple[dict[int, tuple[torch.UntypedStorage, int]], int]:
    """The weight storages by data pointer, each with its byte offset in one packed buffer
    (64-byte aligned pieces), and the buffer's size."""
    layout: dict[int, tuple[torch.UntypedStorage, int]] = {}
    offset = 0
    for storage in _weight_storages(model):
        layout[storage.data_ptr()] = (storage, offset)
        offset += -(-storage.nbytes() // 64) * 64
    return layout, offset


def _weight_views(
    model: nn.Module, layout: dict[int, tuple[torch.UntypedStorage, int]]
) -> list[_View]:
    """Every tensor of the model on a weight storage (parameters, tied and fused ones, plain
    attributes) with its place in the packed buffer."""
    views: dict[int, _View] = {}
    for t in _module_tensors(model):
        entry = layout.get(t.untyped_storage().data_ptr())
        if entry is None or id(t) in views:
            continue
        elem = t.element_size()
        assert entry[1] % elem == 0  # 64-byte aligned pieces
        views[id(t)] = _View(t, entry[1] // elem + int(t.storage_offset()), t.size(), t.stride())
    return list(views.values())


def _reload_weights(engine: object, model: nn.Module) -> int:
    """Level-2 wake: load the checkpoint on the CPU (or re-draw the random weights) and copy
    every parameter into the model's re-allocated storages; returns the bytes copied."""
    from deploylab.catalog import resolve_model
    from deploylab.engine.models.loader import init_random_model, load_model
    from deploylab.engine.models.presets import get_preset

    config = engine.config  # type: ignore[attr-defined]
    device, dtype = engine.device, engine.dtype  # type: ignore[attr-defined]
    if config.random_weights:
        fresh = init_random_model(get_preset(config.random_weights), dtype, device, config.seed)
    else:
        fresh, _ = load_model(resolve_model(config.model), dtype, torch.device("cpu"))
    source = dict(fresh.named_parameters())
    moved = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            src = source[name]
            param.copy_(src, non_blocking=True)
            moved += src.numel() * src.element_size()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del fresh, source
    return moved

"""`LoraManager`: the engine's multi-LoRA hook — adapter registry, host LRU, device slots,
the scheduler's admission gate and the per-step `LoraBatch`."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deploylab.engine.lora.adapter import (
    TARGET_MODULES,
    LoraAdapter,
    LoraAdapterError,
    LoraNotFoundError,
    load_adapter,
)
from deploylab.engine.lora.config import LoraConfig
from deploylab.engine.lora.ops import LoraBatch, RowGroups, group_rows
from deploylab.engine.lora.slots import Key, LoraSlots
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    """A registered adapter: its id is unique per load, so a reloaded name is a new id."""

    id: int
    name: str
    path: str
    removed: bool = False


@dataclass
class LoraStats:
    """Counters for metrics."""

    loads: int = 0  # adapters copied into a device slot
    evictions: int = 0  # adapters dropped from a device slot for another
    host_loads: int = 0  # adapters read from disk
    host_evictions: int = 0  # host copies dropped (LRU over --max-cpu-loras)
    names: dict[int, str] = field(default_factory=dict)


class LoraManager:
    """Adapters by name; `max_loras` of them resident in device slots, `max_cpu_loras` in
    host memory, least recently used evicted first. One engine step holds at most
    `max_loras` distinct adapters: `admit` keeps a request waiting until its adapter fits."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        config: LoraConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.config = config
        self.model_config = model.config
        self.device = device
        self.slots = LoraSlots(model.config, config.max_loras, config.max_lora_rank, device, dtype)
        self.keys: dict[int, Key] = {}
        for i, layer in enumerate(model.model.layers):
            for name in TARGET_MODULES:
                parent = (
                    layer.self_attn
                    if name in ("q_proj", "k_proj", "v_proj", "o_proj")
                    else layer.mlp
                )
                module = getattr(parent, name)
                assert isinstance(module, nn.Linear)
                self.keys[id(module)] = (i, name)
        self._ids = itertools.count(1)
        self._by_name: dict[str, _Entry] = {}
        self._by_id: dict[int, _Entry] = {}
        self._host: OrderedDict[int, LoraAdapter] = OrderedDict()
        self._slot_of: dict[int, int] = {}  # adapter id -> slot
        self._slot_lru: OrderedDict[int, None] = OrderedDict()  # slots, least recent first
        self._lock = threading.Lock()
        self.stats = LoraStats()
        self._kernels: Any = None  # triton_ops.LoraKernels on CUDA with Triton
        if device.type == "cuda":
            self._kernels = _load_kernels(device)

    # ---- registry ----------------------------------------------------------------------
    def add(self, name: str, path: str) -> int:
        """Read, validate and register an adapter; returns its id. Raises LoraAdapterError."""
        if not name or name != name.strip():
            raise LoraAdapterError(f"LoRA adapter name {name!r} must be a non-empty word.")
        with self._lock:
            if name in self._by_name:
                raise LoraAdapterError(
                    f"A LoRA adapter named '{name}' is already loaded; unload it first."
                )
        adapter = load_adapter(name, path, self.model_config, self.config.max_lora_rank)
        return self.register(adapter)

    def register(self, adapter: LoraAdapter) -> int:
        """Register an adapter already in memory (validated by `load_adapter`, or built by a
        benchmark; one without a path must stay within max_cpu_loras, as it can't be reread)."""
        name = adapter.name
        with self._lock:
            if name in self._by_name:
                raise LoraAdapterError(f"A LoRA adapter named '{name}' is already loaded.")
            entry = _Entry(next(self._ids), name, adapter.path)
            self._by_name[name] = entry
            self._by_id[entry.id] = entry
            self.stats.names[entry.id] = name
            self.stats.host_loads += 1
            self._keep_on_host(entry.id, adapter)
        logger.info(
            "LoRA adapter '%s' loaded: rank %d, %s", name, adapter.rank, adapter.target_modules
        )
        return entry.id

    def remove(self, name: str) -> None:
        """Unregister an adapter: new requests can't name it; running ones finish with it."""
        with self._lock:
            entry = self._by_name.pop(name, None)
            if entry is None:
                raise LoraNotFoundError(f"The LoRA adapter '{name}' is not loaded.")
            entry.removed = True
            self._host.pop(entry.id, None)

    def names(self) -> list[str]:
        """Registered adapter names, in load order."""
        with self._lock:
            return list(self._by_name)

    def path(self, name: str) -> str:
        """Where adapter `name` was loaded from."""
        return self._by_name[name].path

    def resolve(self, name: str) -> int:
        """The id of a registered adapter (LoraNotFoundError when unknown)."""
        entry = self._by_name.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise LoraNotFoundError(
                f"The model '{name}' does not exist: no such LoRA adapter (loaded: {known})."
            )
        return entry.id

    # ---- host LRU ----------------------------------------------------------------------
    def _keep_on_host(self, adapter_id: int, adapter: LoraAdapter) -> None:
        if self.device.type == "cuda":  # pinned: slot loads copy asynchronously
            adapter.weights = {k: (_pinned(a), _pinned(b)) for k, (a, b) in adapter.weights.items()}
        self._host[adapter_id] = adapter
        self._host.move_to_end(adapter_id)
        while len(self._host) > self.config.max_cpu_loras:
            self._host.popitem(last=False)
            self.stats.host_evictions += 1

    def _host_copy(self, adapter_id: int) -> LoraAdapter:
        adapter = self._host.get(adapter_id)
        if adapter is not None:
            self._host.move_to_end(adapter_id)
            return adapter
        entry = self._by_id[adapter_id]
        adapter = load_adapter(entry.name, entry.path, self.model_config, self.config.max_lora_rank)
        self.stats.host_loads += 1
        self._keep_on_host(adapter_id, adapter)
        return adapter

    # ---- scheduler hook ----------------------------------------------------------------
    def admit(self, seq: Sequence, running: Iterable[Sequence]) -> bool:
        """Make `seq`'s adapter resident; False when every slot holds an adapter of a
        running request (the request waits, others go ahead)."""
        aid = seq.lora_id
        if aid == 0:
            return True
        with self._lock:
            slot = self._slot_of.get(aid)
            if slot is not None:
                self._slot_lru.move_to_end(slot)
                return True
            slot = self._free_slot({s.lora_id for s in running})
            if slot is None:
                return False
            self.slots.write(slot, aid, self._host_copy(aid))
            self._slot_of[aid] = slot
            self._slot_lru[slot] = None
            self.stats.loads += 1
            return True

    def _free_slot(self, busy: set[int]) -> int | None:
        used = set(self._slot_lru)
        for slot in range(self.slots.num_slots):
            if slot not in used:
                return slot
        for slot in self._slot_lru:  # least recently used first
            if self.slots.adapter_id[slot] not in busy:
                del self._slot_of[self.slots.adapter_id[slot]]
                del self._slot_lru[slot]
                self.slots.clear(slot)
                self.stats.evictions += 1
                return slot
        return None

    def slot_of(self, adapter_id: int) -> int | None:
        """The device slot holding an adapter, if resident."""
        return self._slot_of.get(adapter_id)

    # ---- model runner hook -------------------------------------------------------------
    def prepare(self, seqs: Iterable[tuple[Sequence, int]], num_tokens: int) -> LoraBatch | None:
        """The step's `LoraBatch` for rows laid out as `seqs` (sequence, rows) in order,
        single-token rows first, or None when every row uses the base model."""
        decode_slots: list[int] = []  # the leading single-token rows
        segments: list[tuple[int, int, int]] = []  # (start row, rows, slot) of adapter chunks
        row, any_lora = 0, False
        for seq, n in seqs:
            slot = -1
            if seq.lora_id:
                found = self._slot_of.get(seq.lora_id)
                if found is None:  # admitted requests keep their adapter resident
                    raise RuntimeError(f"LoRA adapter of {seq.request_id} is not resident")
                slot, any_lora = found, True
            if n == 1 and not segments:
                decode_slots.append(slot)
            elif slot >= 0:
                segments.append((row, n, slot))
            row += n
        if not any_lora:
            return None
        assert row == num_tokens
        if self._kernels is not None:
            plan = self._kernels.plan(decode_slots, segments, self.slots.max_rank, self.device)
            return LoraBatch(self.slots, self.keys, RowGroups([]), plan)
        row_slots = list(decode_slots)
        for start, n, slot in segments:
            row_slots.extend([-1] * (start - len(row_slots)) + [slot] * n)
        row_slots.extend([-1] * (num_tokens - len(row_slots)))
        return LoraBatch(self.slots, self.keys, group_rows(row_slots, self.device))

    @property
    def supports_graphs(self) -> bool:
        """True when decode steps with adapters can be captured (Triton kernels on CUDA)."""
        return self._kernels is not None

    def row_slot(self, seq: Sequence) -> int:
        """The slot of a running sequence's adapter (-1 = base model)."""
        return self._slot_of[seq.lora_id] if seq.lora_id else -1

    def graph_batch(self, slots_and_order: torch.Tensor) -> LoraBatch | None:
        """A `LoraBatch` reading each decode row's slot (int32, -1 = base) and then the rows'
        slot order from the static `slots_and_order` of a CUDA graph; None without the
        Triton kernels."""
        if self._kernels is None:
            return None
        plan = self._kernels.graph_plan(slots_and_order, self.slots.max_rank)
        return LoraBatch(self.slots, self.keys, RowGroups([]), plan)

    def adapter_name(self, adapter_id: int) -> str:
        """The name an adapter id was loaded under."""
        return self.stats.names.get(adapter_id, f"lora-{adapter_id}")


def _pinned(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_pinned() else t.pin_memory()


def _load_kernels(device: torch.device) -> Any:
    """The Triton kernels after a start-up self-check: the first decode mode of
    `DECODE_MODES` that passes, else None (the grouped torch path)."""
    try:
        from deploylab.engine.lora.triton_ops import DECODE_MODES, LoraKernels, check_kernels
    except ImportError:
        logger.warning("Triton is missing: LoRA corrections take the grouped torch path")
        return None
    for decode in DECODE_MODES:
        try:
            check_kernels(device, decode)
            return LoraKernels(decode)
        except Exception as exc:  # noqa: BLE001 - any failure means: don't use this variant
            logger.warning("LoRA kernels (decode %s) failed their self-check: %r", decode, exc)
    return None

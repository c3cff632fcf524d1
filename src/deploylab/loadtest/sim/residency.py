"""Which models and LoRA adapters are loaded: cold loads take time, the LRU idle one is evicted.

Base models and adapters have separate residency limits. A model with requests in flight is
never evicted; if every resident one is busy, a cold load waits until one becomes idle. Loads
of different models proceed in parallel.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from deploylab.loadtest.sim.config import SimConfig

Ready = Callable[[Any], None]
Schedule = Callable[[float, Callable[[Any], None], Any], object]


class ModelResidency:
    """Tracks residency, runs cold loads on the simulator's timer, and pins models in use."""

    def __init__(self, config: SimConfig, schedule_in: Schedule) -> None:
        self._schedule_in = schedule_in
        self._load_s: dict[str, float] = {}
        self._kind: dict[str, str] = {}
        self._limit = {
            "models": config.residency.max_models,
            "adapters": config.residency.max_adapters,
        }
        self._resident: dict[str, OrderedDict[str, None]] = {
            "models": OrderedDict(),
            "adapters": OrderedDict(),
        }
        self._loading: dict[str, list[tuple[Ready, Any]]] = {}
        self._pending: dict[str, deque[str]] = {"models": deque(), "adapters": deque()}
        self._in_use: dict[str, int] = {}
        self._in_progress: set[str] = set()
        self.loads: dict[str, int] = {}
        self.evictions = 0
        for kind, specs in (("models", config.models), ("adapters", config.adapters)):
            for spec in specs:
                for name in spec.names():
                    self._load_s[name] = spec.load_ms / 1e3
                    self._kind[name] = kind
                    self._in_use[name] = 0
                    self.loads[name] = 0
                    if spec.preload:
                        self._resident[kind][name] = None

    def is_resident(self, name: str) -> bool:
        """Whether `name` is loaded now."""
        return name in self._resident[self._kind[name]]

    def resident(self) -> list[str]:
        """Every loaded model and adapter name."""
        return [*self._resident["models"], *self._resident["adapters"]]

    def acquire(self, name: str, ready: Ready, arg: Any) -> None:
        """Call `ready(arg)` once `name` is loaded (at once if it is) and pin it until release."""
        resident = self._resident[self._kind[name]]
        if name in resident:
            resident.move_to_end(name)
            self._in_use[name] += 1
            ready(arg)
            return
        waiters = self._loading.get(name)
        if waiters is not None:
            waiters.append((ready, arg))
            return
        self._loading[name] = [(ready, arg)]
        self._start_or_queue(name)

    def release(self, name: str) -> None:
        """Unpin one use of `name`; an idle model may then make room for a waiting load."""
        self._in_use[name] -= 1
        if self._in_use[name] == 0:
            pending = self._pending[self._kind[name]]
            while pending and self._free_slot(self._kind[pending[0]]):
                self._begin_load(pending.popleft())

    def _start_or_queue(self, name: str) -> None:
        kind = self._kind[name]
        if self._free_slot(kind):
            self._begin_load(name)
        else:
            self._pending[kind].append(name)

    def _free_slot(self, kind: str) -> bool:
        """Make room for one more load of this kind if possible (evicting the LRU idle one)."""
        limit = self._limit[kind]
        resident = self._resident[kind]
        loading = sum(1 for n in self._in_progress if self._kind[n] == kind)
        if limit is None or len(resident) + loading < limit:
            return True
        for name in resident:  # least recently used first
            if self._in_use[name] == 0:
                del resident[name]
                self.evictions += 1
                return True
        return False

    def _begin_load(self, name: str) -> None:
        self.loads[name] += 1
        self._in_progress.add(name)
        delay = self._load_s[name]
        if delay <= 0:
            self._loaded(name)
        else:
            self._schedule_in(delay, self._loaded, name)

    def _loaded(self, name: str) -> None:
        self._in_progress.discard(name)
        self._resident[self._kind[name]][name] = None
        for ready, arg in self._loading.pop(name, []):
            self._in_use[name] += 1
            ready(arg)

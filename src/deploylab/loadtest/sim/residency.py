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
ScheduleAt = Callable[[float, Callable[[Any], None], Any], object]


class ModelResidency:
    """Tracks residency, runs cold loads on the simulator's timer, and pins models in use."""

    def __init__(self, config: SimConfig, schedule_at: ScheduleAt) -> None:
        self._schedule_at = schedule_at
        self._ready_at: dict[str, float] = {}
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

    def ready_at(self, name: str) -> float:
        """The intended time `name`'s latest load finished (0 if it never loaded)."""
        return self._ready_at.get(name, 0.0)

    def acquire(self, name: str, ready: Ready, arg: Any, at: float) -> None:
        """Call `ready(arg)` once `name` is loaded (at once if it is) and pin it until release.

        `at` is the intended time of the request; a cold load started by it ends at
        `at + load_ms`."""
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
        kind = self._kind[name]
        if self._free_slot(kind):
            self._begin_load(name, at)
        else:
            self._pending[kind].append(name)

    def release(self, name: str, at: float) -> None:
        """Unpin one use of `name` (as of intended time `at`); an idle model may then make
        room for a waiting load."""
        self._in_use[name] -= 1
        if self._in_use[name] == 0:
            pending = self._pending[self._kind[name]]
            while pending and self._free_slot(self._kind[pending[0]]):
                self._begin_load(pending.popleft(), at)

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

    def _begin_load(self, name: str, at: float) -> None:
        self.loads[name] += 1
        self._in_progress.add(name)
        self._ready_at[name] = at + self._load_s[name]
        if self._load_s[name] <= 0:
            self._loaded(name)
        else:
            self._schedule_at(self._ready_at[name], self._loaded, name)

    def _loaded(self, name: str) -> None:
        self._in_progress.discard(name)
        self._resident[self._kind[name]][name] = None
        for ready, arg in self._loading.pop(name, []):
            self._in_use[name] += 1
            ready(arg)

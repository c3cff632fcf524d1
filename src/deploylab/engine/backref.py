"""A weak back-reference from an engine's helper to the engine that owns it."""

from __future__ import annotations

import weakref
from typing import Any


class EngineBackRef:
    """A descriptor holding its value weakly: a helper stored on the engine that points back
    at it makes no cycle, so a dropped engine frees its device memory at once (without
    waiting for a garbage collection that a second engine in the process would need first)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}_weakref"

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        engine = getattr(obj, self._slot)()
        if engine is None:
            raise RuntimeError("the engine this helper belongs to was freed")
        return engine

    def __set__(self, obj: object, engine: object) -> None:
        setattr(obj, self._slot, weakref.ref(engine))

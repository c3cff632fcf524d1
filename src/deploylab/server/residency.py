"""Many models in one server: which are resident, which sleep, and who waits for a wake.

Every model has its own `AsyncEngine` (its own engine thread). A model is `resident`
(weights and KV cache on the device), `sleeping` (sleep level 1: weights in host memory) or
`unloaded` (level 2: weights dropped, reloaded from the checkpoint on wake); `waking` while a
wake runs. Resident models' footprints (weight bytes + KV-cache bytes) stay within the memory
budget: a wake first puts the least recently used idle models to sleep. A request to a
resident model never waits on anything here (no lock, no await); a request to a sleeping
model waits for its wake. A model with requests in flight is never put to sleep.

All state changes run on the server's event loop; sleep and wake themselves run on the
model's engine thread (`AsyncEngine.call`), so other models keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from deploylab.engine.sleep import SleepReport
from deploylab.errors import ConfigError
from deploylab.server.errors import APIError
from deploylab.server.handlers import GenerationHandler
from deploylab.server.metrics import ServerMetrics
from deploylab.server.residency_metrics import ResidencyMetrics

log = logging.getLogger(__name__)

RESIDENT, SLEEPING, UNLOADED, WAKING = "resident", "sleeping", "unloaded", "waking"
STATE_HEADER = "x-deploylab-model-state"  # the model's state when the request arrived
_ASLEEP = {1: SLEEPING, 2: UNLOADED}


@dataclass
class ServedModel:
    """One model of the server: its engine, handler, footprint and residency state."""

    name: str
    engine: Any  # AsyncEngine
    handler: GenerationHandler
    metrics: ServerMetrics
    weight_bytes: int
    kv_bytes: int
    state: str = RESIDENT
    in_flight: int = 0
    last_used: float = 0.0
    transition: asyncio.Task[None] | None = None  # a running wake or sleep

    @property
    def footprint(self) -> int:
        """Device bytes while resident: weights plus KV cache."""
        return self.weight_bytes + self.kv_bytes

    @property
    def occupies(self) -> bool:
        """True while its footprint counts against the budget (resident or waking)."""
        return self.state in (RESIDENT, WAKING)


@dataclass
class ResidencyManager:
    """The served models and the policy keeping their resident footprints in a budget."""

    models: dict[str, ServedModel]
    budget_bytes: int | None = None  # None: no budget (every model may stay resident)
    keep_alive: float | None = None  # idle seconds before a resident model sleeps
    sleep_level: int = 1  # level used when the manager puts a model to sleep
    max_resident: int | None = None  # most models resident at once (None: no limit)
    clock: Callable[[], float] = time.monotonic
    metrics: ResidencyMetrics = field(default_factory=ResidencyMetrics)
    _released: asyncio.Event | None = None
    _budget_lock: asyncio.Lock | None = None
    _keeper: asyncio.Task[None] | None = None

    # ---- routing ------------------------------------------------------------------------
    @property
    def default(self) -> ServedModel:
        """The first model (requests without a `model` field go to it)."""
        return next(iter(self.models.values()))

    def resolve(self, name: str | None) -> ServedModel:
        """The model a request's `model` field names (404 for an unknown name). The one
        place where a name is mapped to what serves it."""
        if name is None:
            return self.default
        served = self.models.get(name)
        if served is None:
            known = ", ".join(f"'{n}'" for n in self.models)
            raise APIError(
                404, f"The model '{name}' does not exist; this server serves {known}.", "model"
            )
        return served

    def handler_for(self, name: str | None) -> RoutedHandler:
        """A handler that runs the request on the named model, waking it first if needed."""
        served = self.resolve(name)
        return RoutedHandler(self, served, {STATE_HEADER: served.state})

    def cards(self) -> list[dict[str, Any]]:
        """`/v1/models` entries, each with its residency state."""
        return [
            {
                "id": m.name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "deploylab",
                "max_model_len": m.engine.max_model_len,
                "state": m.state,
                "resident_bytes": m.footprint,
            }
            for m in self.models.values()
        ]

    # ---- residency ----------------------------------------------------------------------
    def resident_bytes(self) -> int:
        """Footprint of the models that are resident or waking."""
        return sum(m.footprint for m in self.models.values() if m.occupies)

    @asynccontextmanager
    async def use(self, served: ServedModel) -> AsyncIterator[ServedModel]:
        """Hold `served` resident for the body (waking it first when asleep)."""
        await self._acquire(served)
        try:
            yield served
        finally:
            served.in_flight -= 1
            served.last_used = self.clock()
            if served.in_flight == 0 and self._released is not None:
                self._released.set()

    async def _acquire(self, served: ServedModel) -> None:
        while True:
            if served.state == RESIDENT and served.transition is None:
                served.in_flight += 1  # no await since the check: nothing can sleep it now
                served.last_used = self.clock()
                return
            task = served.transition or self._begin(served, self._wake(served))
            await asyncio.shield(task)  # a cancelled request leaves the wake running

    def _begin(self, served: ServedModel, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run one sleep or wake of `served` as its own task (not cancelled with the request
        that started it); everyone who needs the model meanwhile awaits that task."""

        async def run() -> None:
            try:
                await work
            finally:
                served.transition = None

        task = asyncio.get_running_loop().create_task(run())
        served.transition = task
        return task

    async def _wake(self, served: ServedModel) -> None:
        async with self._lock():
            await self._make_room(served)
            level = 2 if served.state == UNLOADED else 1
            served.state = WAKING
        try:
            report: SleepReport = await asyncio.wrap_future(served.engine.call(_wake))
        except BaseException:
            served.state = _ASLEEP[level]
            raise
        served.state = RESIDENT
        self._event().set()  # a waiter for room may find some now
        self.metrics.observe(served.name, report)
        self.metrics.set_state(served.name, RESIDENT)
        log.info("woke %s from level %d in %.3f s", served.name, level, report.seconds)

    def fits(self, served: ServedModel) -> bool:
        """True when `served` can become resident next to the models resident now."""
        occupying = [m for m in self.models.values() if m.occupies and m is not served]
        if self.max_resident is not None and len(occupying) + 1 > self.max_resident:
            return False
        if self.budget_bytes is None:
            return True
        return sum(m.footprint for m in occupying) + served.footprint <= self.budget_bytes

    async def _make_room(self, served: ServedModel) -> None:
        """Put LRU idle models to sleep until `served` fits; wait while all are busy."""
        while not self.fits(served):
            idle = [
                m
                for m in self.models.values()
                if m.state == RESIDENT and m.in_flight == 0 and m.transition is None
            ]
            if not idle:
                released = self._event()
                released.clear()
                await released.wait()  # a request finished somewhere: look again
                continue
            victim = min(idle, key=lambda m: m.last_used)
            await asyncio.shield(self._begin(victim, self._sleep(victim, self.sleep_level)))

    async def _sleep(self, served: ServedModel, level: int) -> None:
        served.state = _ASLEEP[level]  # new requests take the slow path from here on
        try:
            report: SleepReport = await asyncio.wrap_future(
                served.engine.call(lambda e: e.sleep(level))
            )
        except BaseException:
            served.state = RESIDENT
            raise
        self._event().set()
        self.metrics.observe(served.name, report)
        self.metrics.set_state(served.name, served.state)
        log.info("put %s to sleep (level %d) in %.3f s", served.name, level, report.seconds)

    async def sleep_model(self, served: ServedModel, level: int) -> None:
        """Put an idle model to sleep now (the `/sleep` endpoint); 409 while it is busy."""
        while served.transition is not None:
            await asyncio.shield(served.transition)
        if served.state != RESIDENT or served.transition is not None:
            return
        if served.in_flight:
            raise APIError(
                409,
                f"The model '{served.name}' has {served.in_flight} requests in flight; a "
                "model is never put to sleep while it serves. Retry when it is idle.",
            )
        await asyncio.shield(self._begin(served, self._sleep(served, level)))

    async def wake_model(self, served: ServedModel) -> None:
        """Make a model resident now (the `/wake_up` endpoint), pushing out idle ones."""
        async with self.use(served):
            pass

    # ---- keep-alive ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the keep-alive task (call on the server's event loop)."""
        if self.keep_alive is not None and self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_alive_loop())

    async def _keep_alive_loop(self) -> None:
        assert self.keep_alive is not None
        period = min(max(self.keep_alive / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(period)
            await self.sleep_idle()

    async def sleep_idle(self) -> list[str]:
        """Put to sleep every resident model idle for `keep_alive` seconds; their names."""
        if self.keep_alive is None:
            return []
        now, slept = self.clock(), []
        async with self._lock():
            for m in list(self.models.values()):
                if (
                    m.state == RESIDENT
                    and m.in_flight == 0
                    and m.transition is None
                    and now - m.last_used >= self.keep_alive
                ):
                    await asyncio.shield(self._begin(m, self._sleep(m, self.sleep_level)))
                    slept.append(m.name)
        return slept

    # ---- engine facade (what the app calls on `state.engine`) ---------------------------
    @property
    def dead_reason(self) -> str | None:
        """Why a model's engine no longer runs (None while all do)."""
        for m in self.models.values():
            reason = m.engine.dead_reason
            if reason is not None:
                return f"Model '{m.name}': {reason}"
        return None

    @property
    def max_model_len(self) -> int:
        """The default model's context length."""
        return int(self.default.engine.max_model_len)

    def abort_all(self, cause: Any) -> None:
        """Abort every in-flight request of every model."""
        for m in self.models.values():
            m.handler.abort_all(cause)

    def shutdown(self) -> None:
        """Stop the keep-alive task and every engine."""
        if self._keeper is not None:
            self._keeper.cancel()
        for m in self.models.values():
            m.engine.shutdown()

    def _lock(self) -> asyncio.Lock:
        if self._budget_lock is None:
            self._budget_lock = asyncio.Lock()
        return self._budget_lock

    def _event(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released


def _wake(engine: Any) -> SleepReport:
    report: SleepReport = engine.wake_up()
    return report


class RoutedHandler:
    """The `GenerationHandler` interface for one model; the model stays resident while a
    request of it runs (a stream: until it is closed)."""

    def __init__(
        self, manager: ResidencyManager, served: ServedModel, headers: dict[str, str] | None = None
    ) -> None:
        self.manager = manager
        self.served = served
        self.headers = headers or {}  # extra response headers
        self.engine = served.engine
        self.model_name = served.name

    def abort_all(self, cause: Any) -> None:
        """Abort every in-flight request of every model (server shutdown)."""
        self.manager.abort_all(cause)

    def prepare(self, req: Any, chat: bool) -> Any:
        """Tokenize and validate (needs no resident weights)."""
        return self.served.handler.prepare(req, chat)

    async def complete(self, prepared: Any) -> dict[str, Any]:
        """A whole response, the model held resident meanwhile."""
        async with self.manager.use(self.served):
            return await self.served.handler.complete(prepared)

    async def stream(self, prepared: Any) -> AsyncIterator[str]:
        """Server-sent events, the model held resident until the stream ends."""
        async with self.manager.use(self.served):
            stream = self.served.handler.stream(prepared)
            try:
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()  # type: ignore[attr-defined]


def check_fits(name: str, weight_bytes: int, kv_bytes: int, budget: int | None) -> None:
    """A model whose own footprint exceeds the budget can never be woken: say so at start."""
    if budget is not None and weight_bytes + kv_bytes > budget:
        gib = 1024**3
        raise ConfigError(
            f"Model '{name}' needs {(weight_bytes + kv_bytes) / gib:.2f} GiB resident "
            f"(weights {weight_bytes / gib:.2f} GiB + KV cache {kv_bytes / gib:.2f} GiB), more "
            f"than the memory budget of {budget / gib:.2f} GiB. Raise --memory-budget-gib, "
            "lower its --kv-cache-gib, or serve a smaller model."
        )

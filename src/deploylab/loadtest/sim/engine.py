"""The simulated engine: model loads, KV-capacity queueing, prefix cache and token timing.

A request goes: (slow first byte) -> model and adapter resident (cold load) -> FIFO queue until
its KV reservation (prompt + output tokens) fits and a running slot is free -> first token at
admission + TTFT law -> each next token one ITL later, the ITL law evaluated with the batch at
that moment. Every step is a timer callback; no coroutine runs per request or per token.

Each step starts at the *intended* time of the step before it (the request's complete arrival,
the end of a model load, the intended last token of the request that freed KV space), never at
the moment the simulator got round to it, so the simulator's own processing time and timer
lateness do not leak into the laws.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

from deploylab.loadtest.sim.config import SimConfig
from deploylab.loadtest.sim.faults import FaultInjector, FaultPlan
from deploylab.loadtest.sim.http import HttpConnection
from deploylab.loadtest.sim.law import PerformanceLaw
from deploylab.loadtest.sim.metrics import ModelMetrics
from deploylab.loadtest.sim.openai_format import DONE, StreamFormat, full_response
from deploylab.loadtest.sim.prefix_cache import PrefixCache
from deploylab.loadtest.sim.residency import ModelResidency
from deploylab.loadtest.sim.stats import LatenessHistogram
from deploylab.loadtest.sim.timer import Entry, PreciseTimer

_NEW, _LOADING, _WAITING, _RUNNING, _DONE = range(5)


@dataclass(slots=True)
class Scheduled:
    """What the engine intended for one request (times on time.monotonic), recorded when
    `SimEngine.schedule` is a list: the laws checked without a stopwatch."""

    rid: str
    model: str
    prompt_tokens: int
    arrival: float  # its last byte was read
    admitted_at: float  # intended admission (after model loads and KV queueing)
    others: int  # requests already running at admission
    cached: int  # prompt tokens found in the prefix cache
    token_due: list[float] = field(default_factory=list)  # intended time of every token
    token_others: list[int] = field(default_factory=list)  # others running when each next
    # token was scheduled (the batch term of the ITL law)


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request's inputs and its progress through the simulated engine."""

    rid: str
    model: str
    base: str
    adapter: str | None
    created: int
    chat: bool
    stream: bool
    include_usage: bool
    prompt_tokens: int
    blocks: list[int]
    output_tokens: int
    finish_reason: str
    conn: HttpConnection
    faults: FaultPlan | None
    arrival: float  # when the request's last byte arrived (time.monotonic)
    fmt: StreamFormat | None = None
    ready_at: float = 0.0  # intended time the current step may start
    state: int = _NEW
    pinned: list[str] = field(default_factory=list)
    queued_at: float = 0.0
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_write: float = 0.0
    cached: int = 0
    sent: int = 0
    due: float = 0.0
    timer: Entry | None = None
    stalled: bool = False
    continuous_usage: bool = False
    scheduled: Scheduled | None = None  # filled when the engine records its schedule

    @property
    def kv_need(self) -> int:
        return self.prompt_tokens + self.output_tokens


class SimEngine:
    """Runs simulated requests on a PreciseTimer, following the configured laws."""

    def __init__(self, config: SimConfig, timer: PreciseTimer) -> None:
        self.config = config
        self.timer = timer
        rng = random.Random(config.seed)
        self.law = PerformanceLaw(config.ttft, config.itl, config.output, rng)
        self.faults = FaultInjector(config.faults, random.Random(config.seed + 1))
        pc = config.prefix_cache
        capacity = pc.capacity_tokens or config.engine.kv_capacity_tokens
        self.prefix = PrefixCache(max(capacity // pc.block_size, 1), pc.block_size, pc.enabled)
        self.residency = ModelResidency(config, timer.call_at)  # type: ignore[arg-type]
        self.kv_capacity = config.engine.kv_capacity_tokens
        self.max_running = config.engine.max_running
        self.kv_used = 0
        self.running = 0
        self.waiting: deque[SimRequest] = deque()
        self.models = {name: ModelMetrics() for name in config.model_names()}
        self.lateness = LatenessHistogram()
        self.first_token_lateness = LatenessHistogram()
        self.aborted = 0
        self.schedule: list[Scheduled] | None = None  # a list: record every request's plan

    # -- admission --------------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        """Start a validated request; its response is written to `req.conn` as it progresses."""
        req.conn.on_lost = lambda: self.cancel(req)
        plan = req.faults
        req.ready_at = req.arrival
        if plan is not None and plan.slow_first_byte_s > 0:
            req.ready_at += plan.slow_first_byte_s
            req.timer = self.timer.call_at(req.ready_at, self._accept, req)
        else:
            self._accept(req)

    def _accept(self, req: SimRequest) -> None:
        if req.state == _DONE:
            return
        if req.stream:
            req.conn.start_stream()
        req.state = _LOADING
        self.residency.acquire(req.base, self._base_ready, req, req.ready_at)

    def _base_ready(self, req: SimRequest) -> None:
        req.pinned.append(req.base)
        req.ready_at = max(req.ready_at, self.residency.ready_at(req.base))
        if req.state == _DONE:
            self._unpin(req, req.ready_at)
            return
        if req.adapter is not None:
            self.residency.acquire(req.adapter, self._queue, req, req.ready_at)
        else:
            self._queue(req)

    def _queue(self, req: SimRequest) -> None:
        if req.adapter is not None:
            req.pinned.append(req.adapter)
            req.ready_at = max(req.ready_at, self.residency.ready_at(req.adapter))
        if req.state == _DONE:  # the client left while the model loaded
            self._unpin(req, req.ready_at)
            return
        req.state = _WAITING
        req.queued_at = req.ready_at
        self.waiting.append(req)
        self.models[req.model].waiting += 1
        self._admit(req.ready_at)

    def _admit(self, at: float) -> None:
        """Start waiting requests that fit, as of intended time `at`."""
        waiting = self.waiting
        while (
            waiting
            and self.running < self.max_running
            and self.kv_used + waiting[0].kv_need <= self.kv_capacity
        ):
            req = waiting.popleft()
            self._start(req, max(at, req.ready_at))

    def _start(self, req: SimRequest, at: float) -> None:
        stats = self.models[req.model]
        stats.waiting -= 1
        stats.running += 1
        req.state = _RUNNING
        req.admitted_at = at
        others = self.running
        self.running += 1
        self.kv_used += req.kv_need
        req.cached = self.prefix.lookup(req.blocks, req.prompt_tokens)
        req.due = at + self.law.ttft_s(req.prompt_tokens, req.cached, others)
        req.timer = self.timer.call_at(req.due, self._emit, req)
        if self.schedule is not None:
            req.scheduled = Scheduled(
                req.rid, req.model, req.prompt_tokens, req.arrival, at, others, req.cached
            )
            self.schedule.append(req.scheduled)

    # -- tokens -----------------------------------------------------------------------------
    def _emit(self, req: SimRequest) -> None:
        now = time.monotonic()
        k = req.sent
        plan = req.faults
        if plan is not None:
            if k == plan.drop_before_token:
                req.conn.abort()
                self._finish(req, "abort", now, req.due)
                return
            if k == plan.truncate_before_token and req.stream:
                req.conn.end_stream(DONE)  # cut short: no event names a finish_reason
                self._finish(req, "abort", now, req.due)
                return
            if k == plan.stall_before_token and not req.stalled:
                req.stalled = True
                req.due += plan.stall_s
                req.timer = self.timer.call_at(req.due, self._emit, req)
                return
        self.lateness.add(now - req.due)
        if req.scheduled is not None:
            req.scheduled.token_due.append(req.due)
        stats = self.models[req.model]
        if k == 0:
            req.first_token_at = now
            self.first_token_lateness.add(now - req.due)
            self.prefix.insert(req.blocks)
            stats.ttft.observe(now - req.arrival)
        else:
            stats.itl.observe(now - req.last_write)
        req.last_write = now
        req.sent = k + 1
        last = req.sent >= req.output_tokens
        if req.stream:
            fmt = req.fmt
            assert fmt is not None
            usage_of = (req.prompt_tokens, k + 1) if req.continuous_usage else None
            if k and not last and usage_of is None:
                req.conn.write_framed(fmt.framed_token(k))
            elif not last:
                req.conn.write_chunk(fmt.token(k, None, usage_of))
            else:
                tail = fmt.token(k, req.finish_reason, usage_of)
                if req.include_usage:
                    tail += fmt.usage_event(req.prompt_tokens, req.sent, req.cached)
                req.conn.end_stream(tail + DONE)
        if last:
            if not req.stream:
                req.conn.send(200, self._full(req))
            self._finish(req, req.finish_reason, now, req.due)
            return
        req.due += self.law.itl_s(self.running - 1)
        req.timer = self.timer.call_at(req.due, self._emit, req)
        if req.scheduled is not None:
            req.scheduled.token_others.append(self.running - 1)

    def _full(self, req: SimRequest) -> bytes:
        return full_response(
            req.rid, req.model, req.created, req.chat, req.sent, req.finish_reason,
            req.prompt_tokens, req.cached,
        )  # fmt: skip

    # -- completion and cancellation ----------------------------------------------------------
    def _finish(self, req: SimRequest, reason: str, now: float, at: float) -> None:
        """Record the outcome (measured at `now`) and free the request's KV as of `at`."""
        req.state = _DONE
        self.running -= 1
        self.kv_used -= req.kv_need
        stats = self.models[req.model]
        stats.running -= 1
        stats.finished[reason] = stats.finished.get(reason, 0) + 1
        stats.prompt_tokens += req.prompt_tokens
        stats.generation_tokens += req.sent
        stats.prompt_len.observe(req.prompt_tokens)
        stats.gen_len.observe(req.sent)
        stats.e2e.observe(now - req.arrival)
        stats.queue.observe(req.admitted_at - req.arrival)
        if req.sent:
            stats.prefill.observe(req.first_token_at - req.admitted_at)
            stats.decode.observe(now - req.first_token_at)
            if req.sent > 1:
                stats.tpot.observe((now - req.first_token_at) / (req.sent - 1))
        self._unpin(req, at)
        self._admit(at)

    def _unpin(self, req: SimRequest, at: float) -> None:
        for name in req.pinned:
            self.residency.release(name, at)
        req.pinned.clear()

    def cancel(self, req: SimRequest) -> None:
        """The client went away: free whatever the request holds."""
        state = req.state
        req.state = _DONE
        if req.timer is not None:
            PreciseTimer.cancel(req.timer)
        self.aborted += 1
        now = time.monotonic()
        if state == _RUNNING:
            req.state = _RUNNING
            self._finish(req, "abort", now, now)
        elif state == _WAITING:
            self.waiting.remove(req)
            self.models[req.model].waiting -= 1
            self._unpin(req, now)
            self._admit(now)
        # _NEW / _LOADING: the pending callback sees _DONE and lets go of its pins.

    def kv_usage(self) -> float:
        """Reserved KV tokens over capacity."""
        return self.kv_used / self.kv_capacity

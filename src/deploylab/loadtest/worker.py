"""One worker: an asyncio loop that sends its share of the load and records every request.

Open loop: each work item is launched at its precomputed absolute send time, however many
requests are already in flight. Closed loop: each of `concurrency` slots sends its next item as
soon as its previous one finished. A session's later turns are scheduled at the previous
answer's end plus the think time. Scheduled and actual send times are both recorded, so
lateness (client backlog) shows instead of hiding inside the latencies.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from deploylab.loadtest.client import RawRecord, send_streaming
from deploylab.loadtest.http_client import ConnectionPool, Endpoint
from deploylab.loadtest.pacing import Pacer
from deploylab.loadtest.workload import Turn, WorkItem, WorkloadGenerator

_PROGRESS_EVERY_S = 0.5


@dataclass
class WorkerTask:
    """Everything one worker needs (picklable: sent to worker processes)."""

    worker_id: int
    url: str  # the full endpoint URL
    api: Literal["chat", "completions"]
    generator: WorkloadGenerator
    mode: Literal["closed", "open", "trace"]
    schedule: list[tuple[int, float]] = field(default_factory=list)  # open/trace: (item, s)
    slot_starts: list[float] = field(default_factory=list)  # closed: one start offset per slot
    first_index: int = 0  # closed: items first_index, first_index + index_step, ...
    index_step: int = 1
    max_requests: int | None = None  # this worker's share of the request budget
    deadline_s: float | None = None  # no request is sent after this offset
    model_map: dict[str, str] = field(default_factory=dict)
    default_model: str = ""
    body_options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    keep_text: bool = False  # keep answers without usage, for counting with a tokenizer
    turn_classes: bool = False


@dataclass
class ProgressUpdate:
    """Counts since the previous update from one worker."""

    worker: int
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    ttft_ms: list[float] = field(default_factory=list)


ProgressFn = Callable[[ProgressUpdate], None]


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until a perf_counter_ns deadline (returns at once if it has passed).

    Loops because event-loop timers may fire early: uvloop's timers have millisecond
    granularity and can round a delay down.
    """
    while True:
        delay = (deadline_ns - time.perf_counter_ns()) / 1e9
        if delay <= 0:
            return
        await asyncio.sleep(delay)


class _Worker:
    def __init__(
        self,
        task: WorkerTask,
        pool: ConnectionPool,
        start_ns: int,
        progress: ProgressFn | None,
    ) -> None:
        self.task, self.pool, self.start_ns = task, pool, start_ns
        self.endpoint = Endpoint.from_url(task.url)
        self.pacer = Pacer()
        self.progress = progress
        self.records: list[RawRecord] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.started = 0
        self.pending = ProgressUpdate(task.worker_id)
        self.deadline_ns = (
            None if task.deadline_s is None else start_ns + int(task.deadline_s * 1e9)
        )

    # -- budget ------------------------------------------------------------------------------
    def _may_send(self) -> bool:
        if self.deadline_ns is not None and time.perf_counter_ns() >= self.deadline_ns:
            return False
        if self.task.max_requests is not None and self.started >= self.task.max_requests:
            return False
        return True

    # -- one session ---------------------------------------------------------------------------
    def _body(self, item: WorkItem, history: list[str], turn: Turn, model: str) -> bytes:
        body: dict[str, Any] = {"model": model}
        if self.task.api == "chat":
            messages = [{"role": "system", "content": item.system}] if item.system else []
            for i, text in enumerate(history):
                messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
            messages.append({"role": "user", "content": turn.content})
            body["messages"] = messages
        else:
            body["prompt"] = " ".join(p for p in (item.system, *history, turn.content) if p)
        body["max_tokens"] = turn.max_tokens
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        body.update(self.task.body_options)
        return json.dumps(body).encode()

    async def run_item(self, item: WorkItem, scheduled_ns: int) -> None:
        task = self.task
        model = task.model_map.get(item.model, item.model) if item.model else task.default_model
        history: list[str] = []
        for k, turn in enumerate(item.turns):
            if k > 0:  # scheduled at the previous answer's end plus the think time
                if self.deadline_ns is not None and scheduled_ns >= self.deadline_ns:
                    return  # due after the send phase: do not sleep through the think time
                await sleep_until(scheduled_ns)
            if not self._may_send():
                return
            self.started += 1
            classes = dict(item.classes)
            if task.turn_classes:
                classes["turn"] = str(k + 1)
            rec = RawRecord(
                index=item.index,
                turn=k + 1,
                worker=task.worker_id,
                model=model,
                session=item.session,
                classes=classes,
                planned_input_tokens=item.system_tokens + turn.input_tokens,
                max_tokens=turn.max_tokens,
                scheduled_ns=scheduled_ns,
            )
            self.records.append(rec)
            body = self._body(item, history, turn, model)
            self.pending.in_flight += 1
            await send_streaming(self.pool, self.endpoint, body, rec, task.timeout_s, self.pacer)
            self._count(rec)
            if rec.error_kind is not None:
                return  # a user whose request failed abandons the session
            history += [turn.content, rec.text]
            if k + 1 < len(item.turns):
                scheduled_ns = rec.end_ns + int(item.turns[k + 1].think_s * 1e9)
            if not (task.keep_text and rec.completion_tokens is None):
                rec.text = ""  # answers are only needed for the history of this session

    def _count(self, rec: RawRecord) -> None:
        self.pending.in_flight -= 1
        if rec.error_kind is None:
            self.pending.done += 1
            self.pending.ttft_ms.append((rec.chunk_ns[0] - rec.sent_ns) / 1e6)
        elif rec.error_kind != "cancelled":
            self.pending.failed += 1

    def flush_progress(self) -> None:
        if self.progress is not None:
            self.progress(self.pending)
        self.pending = ProgressUpdate(self.task.worker_id)

    # -- load shapes -------------------------------------------------------------------------
    def _launch(self, item: WorkItem, scheduled_ns: int) -> None:
        job = asyncio.get_running_loop().create_task(self.run_item(item, scheduled_ns))
        self.in_flight.add(job)
        job.add_done_callback(self.in_flight.discard)

    async def open_loop(self) -> None:
        gen = self.task.generator
        for index, offset in self.task.schedule:
            item = gen.item(index)  # built before its send time comes
            scheduled_ns = self.start_ns + int(offset * 1e9)
            await sleep_until(scheduled_ns)
            if not self._may_send():
                break
            self._launch(item, scheduled_ns)
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight), return_exceptions=True)

    async def _slot(self, start_s: float, next_index: Callable[[], int]) -> None:
        await sleep_until(self.start_ns + int(start_s * 1e9))
        while self._may_send():
            await self.pacer.turn()  # building and sending a request is bookkeeping too
            scheduled_ns = time.perf_counter_ns()  # the slot is free now
            item = self.task.generator.item(next_index())
            await self.run_item(item, scheduled_ns)

    async def closed_loop(self) -> None:
        counter = {"next": self.task.first_index}

        def next_index() -> int:
            index = counter["next"]
            counter["next"] += self.task.index_step
            return index

        for start_s in self.task.slot_starts:
            job = asyncio.get_running_loop().create_task(self._slot(start_s, next_index))
            self.in_flight.add(job)
            job.add_done_callback(self.in_flight.discard)
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight), return_exceptions=True)

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            self.flush_progress()


async def run_worker(
    task: WorkerTask,
    start: Callable[[], Awaitable[int]],
    stop: asyncio.Event,
    progress: ProgressFn | None = None,
) -> list[RawRecord]:
    """Run one worker's load; `start` returns the shared start time (perf_counter_ns) once
    every worker is ready. Setting `stop` ends the run: nothing new is sent, requests in
    flight are cancelled (recorded as `cancelled`), and the records so far are returned."""
    # Objects alive now (imports, the workload) never become garbage: keep the collector's
    # full passes from walking them, which stalled sends by ~35 ms at 750 requests/s.
    gc.freeze()
    pool = ConnectionPool()
    try:
        start_ns = await start()
        worker = _Worker(task, pool, start_ns, progress)
        body = worker.closed_loop() if task.mode == "closed" else worker.open_loop()
        main = asyncio.ensure_future(body)
        stopper = asyncio.ensure_future(stop.wait())
        ticker = asyncio.ensure_future(worker.ticker())
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        ticker.cancel()
        if not main.done():
            main.cancel()
            for job in list(worker.in_flight):
                job.cancel()
        stopper.cancel()
        await asyncio.gather(main, stopper, ticker, *worker.in_flight, return_exceptions=True)
        _cancel_unfinished(worker.records)
        worker.flush_progress()
    finally:
        pool.close()
    return worker.records


def _cancel_unfinished(records: list[RawRecord]) -> None:
    """Requests cancelled before their send began carry no times; mark them."""
    now = time.perf_counter_ns()
    for rec in records:
        if rec.end_ns == 0:
            rec.error_kind = rec.error_kind or "cancelled"
            rec.end_ns = now

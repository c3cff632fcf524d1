"""Worker processes: spawn one per task, start them at one shared instant, collect progress and
records, and pass a Ctrl-C on as a stop signal.

Processes are spawned (not forked): the parent may hold threads (tokenizer pools, the progress
display) that a fork would copy in a broken state. Workers ignore SIGINT themselves; the parent
catches it and sets a shared stop event, so every worker stops the same way and returns its
partial records. `time.perf_counter_ns` is CLOCK_MONOTONIC on Linux, one clock for all
processes, so the parent's start instant means the same in every worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from deploylab.errors import DeploylabError
from deploylab.loadtest.client import RawRecord
from deploylab.loadtest.worker import ProgressFn, WorkerTask, run_worker

_START_MARGIN_NS = 200_000_000  # time for every worker to receive the start instant
_READY_TIMEOUT_S = 120.0


def new_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _process_main(
    task: WorkerTask, start_q: Queue[int], result_q: Queue[Any], stop_evt: Event
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    parent = os.getppid()
    try:

        async def main() -> list[RawRecord]:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()

            async def watch() -> None:
                # a parent killed outright (SIGKILL, a Ray actor killed) cannot set the
                # event: stop when it is gone rather than load the target as an orphan
                while not stop_evt.is_set() and os.getppid() == parent:
                    await asyncio.sleep(0.05)
                stop.set()

            async def start() -> int:
                result_q.put(("ready", task.worker_id, None))
                start_ns = await loop.run_in_executor(None, start_q.get)
                if start_ns < 0:  # aborted before the start
                    stop.set()
                    return time.perf_counter_ns()
                return start_ns

            def progress(update: Any) -> None:
                result_q.put(("progress", task.worker_id, update))

            watcher = asyncio.ensure_future(watch())
            try:
                return await run_worker(task, start, stop, progress)
            finally:
                watcher.cancel()

        with new_runner() as runner:
            records = runner.run(main())
        if os.getppid() != parent:  # nobody reads the queue: exit without flushing it
            result_q.cancel_join_thread()
            return
        result_q.put(("done", task.worker_id, records))
    except BaseException:  # report everything, the parent raises it
        result_q.put(("error", task.worker_id, traceback.format_exc()))


def run_processes(
    tasks: list[WorkerTask],
    progress: ProgressFn | None,
    start_ns: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[RawRecord], int, int | None]:
    """Run each task in its own process; return merged records, the start instant and when
    the run was interrupted (perf_counter_ns; None when it was not). `start_ns` fixes the
    start instant (else: once every worker is ready, plus a margin); `stop()` returning True
    stops the workers as Ctrl-C does (a Ray actor's stop call)."""
    fixed_start = start_ns
    ctx = mp.get_context("spawn")
    result_q: Queue[Any] = ctx.Queue()
    stop_evt = ctx.Event()
    start_qs: list[Queue[int]] = [ctx.Queue() for _ in tasks]
    procs = [
        ctx.Process(
            target=_process_main,
            args=(task, start_qs[i], result_q, stop_evt),
            name=f"deploylab-loadtest-worker-{i}",
            daemon=True,
        )
        for i, task in enumerate(tasks)
    ]
    state: dict[str, Any] = {"interrupted": False}

    def on_sigint(signum: int, frame: Any) -> None:
        state["interrupted"] = True
        state.setdefault("stopped_ns", time.perf_counter_ns())
        stop_evt.set()

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if on_main else None
    records: dict[int, list[RawRecord]] = {}
    errors: dict[int, str] = {}
    try:
        for proc in procs:
            proc.start()
        ready: set[int] = set()
        deadline = time.monotonic() + _READY_TIMEOUT_S
        start_ns = -1
        while len(ready) + len(errors) < len(procs):
            if time.monotonic() > deadline:
                raise DeploylabError("Load-test workers did not start within 120 s.")
            _receive(result_q, procs, ready, records, errors, progress)
        if not errors and not state["interrupted"]:
            start_ns = fixed_start or time.perf_counter_ns() + _START_MARGIN_NS
        for q in start_qs:
            q.put(start_ns)
        while len(records) + len(errors) < len(procs):
            if stop is not None and not stop_evt.is_set() and stop():
                on_sigint(signal.SIGINT, None)
            _receive(result_q, procs, ready, records, errors, progress)
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)
        stop_evt.set()
        for proc in procs:
            if proc.pid is None:  # never started
                continue
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    if errors:
        worker, trace = next(iter(errors.items()))
        raise DeploylabError(f"Load-test worker {worker} failed:\n{trace}")
    merged = [rec for w in sorted(records) for rec in records[w]]
    stopped = state.get("stopped_ns", start_ns) if state["interrupted"] else None
    return merged, start_ns, stopped


def _receive(
    result_q: Queue[Any],
    procs: list[Any],
    ready: set[int],
    records: dict[int, list[RawRecord]],
    errors: dict[int, str],
    progress: ProgressFn | None,
) -> None:
    """Handle one message (or notice a worker that died without a word)."""
    try:
        kind, worker, payload = result_q.get(timeout=0.5)
    except queue.Empty:
        for i, proc in enumerate(procs):
            if proc.exitcode is not None and i not in records and i not in errors:
                # it may have put its last message just before exiting: look once more
                time.sleep(0.2)
                if result_q.empty():
                    errors[i] = f"exited with code {proc.exitcode} without reporting"
        return
    if kind == "ready":
        ready.add(worker)
    elif kind == "progress":
        if progress is not None:
            progress(payload)
    elif kind == "done":
        records[worker] = payload
    elif kind == "error":
        errors[worker] = payload

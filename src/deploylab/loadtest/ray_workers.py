"""Load-generating workers as Ray actors (`--ray-address ADDRESS|local`).

Each actor runs one `WorkerTask` (its share of the arrival schedule) with the same
`run_worker` as a local worker process. The common clock origin is a wall-clock instant
(`time.time_ns`, so machines need NTP-synchronised clocks): every actor maps it onto its own
`perf_counter_ns`, runs, and shifts its records back onto the driver's `perf_counter_ns`
before returning them, so the merged records look like one machine's. An actor that dies
mid-run loses its records: its scheduled requests are recorded as failed (`worker_lost`)
and a note says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from deploylab.errors import DeploylabError, UsageError
from deploylab.loadtest.client import RawRecord
from deploylab.loadtest.worker import WorkerTask

INSTALL_HINT = "pip install 'deploylab[ray]'  (or: pip install ray)"
_START_MARGIN_NS = 500_000_000  # time for every actor to receive the start instant
LOST = "worker_lost"


def require_ray() -> None:
    """Raise UsageError with the install command when Ray is missing."""
    _import_ray()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(
            f"--ray-address needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


class LoadWorker:
    """A Ray actor running one worker task (two concurrent calls: `run` and `stop`)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._task: WorkerTask | None = None

    def prepare(self, task: WorkerTask) -> bool:
        """Receive the task before the start instant is chosen, so its transfer does not
        delay the first sends."""
        import deploylab.loadtest.procs  # noqa: F401

        self._task = task
        return True

    def stop(self) -> None:
        """Make a running `run` stop sending and return its records so far."""
        self._stop.set()

    def run(self, start_wall_ns: int, driver_start_ns: int) -> list[RawRecord]:
        """Run the prepared task from the wall-clock instant `start_wall_ns`; records on the
        driver's perf_counter clock (its value at that instant: `driver_start_ns`). The
        worker runs in a process of its own, as `--workers` does: in the actor's process,
        Ray's own threads would share the event loop's core and GIL."""
        from deploylab.loadtest.procs import run_processes

        task = self._task
        assert task is not None, "prepare() first"
        local_start = time.perf_counter_ns() + (start_wall_ns - time.time_ns())
        records, _, _ = run_processes([task], None, local_start, self._stop.is_set)
        shift = driver_start_ns - local_start
        for rec in records:
            _shift(rec, shift)
        return records


def _shift(rec: RawRecord, delta: int) -> None:
    rec.scheduled_ns += delta
    if rec.sent_ns:
        rec.sent_ns += delta
    if rec.end_ns:
        rec.end_ns += delta
    rec.chunk_ns = [t + delta for t in rec.chunk_ns]


def lost_records(task: WorkerTask, start_ns: int, why: str) -> list[RawRecord]:
    """Failed records for the requests a dead worker was to send (open and trace loads; a
    closed loop's requests are not known in advance)."""
    out: list[RawRecord] = []
    limit = task.max_requests
    for index, offset in task.schedule:
        if task.deadline_s is not None and offset >= task.deadline_s:
            break
        if limit is not None and len(out) >= limit:
            break
        item = task.generator.item(index)
        at = start_ns + int(offset * 1e9)
        model = task.model_map.get(item.model, item.model) if item.model else task.default_model
        first = item.turns[0]
        out.append(
            RawRecord(
                index=item.index,
                turn=1,
                worker=task.worker_id,
                model=model,
                session=item.session,
                classes=dict(item.classes),
                planned_input_tokens=item.system_tokens + first.input_tokens,
                max_tokens=first.max_tokens,
                scheduled_ns=at,
                sent_ns=at,
                end_ns=at,
                error_kind=LOST,
                error_detail=why,
            )
        )
    return out


def connect(address: str, workers: int) -> Any:
    """`ray.init` for `address` ("local": a Ray instance started here with a CPU per worker)."""
    ray = _import_ray()
    if not ray.is_initialized():
        if address == "local":
            # Ray's memory monitor kills workers when the machine's memory is nearly full,
            # whoever filled it; the load generator's actors are small, so it stays off here.
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                _system_config={"memory_monitor_refresh_ms": 0},
            )
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def run_ray(
    tasks: list[WorkerTask],
    address: str,
    on_start: Callable[[list[Any]], None] | None = None,
) -> tuple[list[RawRecord], int, int | None, list[str]]:
    """Run each task on a Ray actor; merged records, the start instant (driver's
    perf_counter_ns), when the run was interrupted (None) and notes about lost workers.
    `on_start` gets the actor handles once the run has started (fault-injection tests)."""
    ray = connect(address, len(tasks))
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < len(tasks):
        raise UsageError(
            f"--workers {len(tasks)} needs a CPU per worker, but the Ray cluster at "
            f"'{address}' has {cpus:g}: use fewer --workers or add nodes."
        )
    actor_cls = ray.remote(num_cpus=1, max_concurrency=2, max_restarts=0)(LoadWorker)
    actors = [actor_cls.remote() for _ in tasks]
    try:
        ray.get([a.prepare.remote(t) for a, t in zip(actors, tasks, strict=True)], timeout=300)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        for a in actors:
            ray.kill(a)
        raise DeploylabError(
            f"Ray could not start {len(tasks)} load-test workers (--ray-address {address}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Check the "
            "cluster's free CPUs and memory (`ray status`), or use fewer --workers."
        ) from exc
    start_wall = time.time_ns() + _START_MARGIN_NS
    start_ns = time.perf_counter_ns() + (start_wall - time.time_ns())
    refs = [a.run.remote(start_wall, start_ns) for a in actors]
    if on_start is not None:
        on_start(actors)
    records: list[RawRecord] = []
    notes: list[str] = []
    stopped: int | None = None
    pending = dict(zip(refs, range(len(tasks)), strict=True))
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                w = pending.pop(ref)
                try:
                    records += ray.get(ref)
                except ray.exceptions.RayError as exc:
                    why = f"load-test worker {w} (Ray actor) died mid-run: {type(exc).__name__}"
                    lost = lost_records(tasks[w], start_ns, why)
                    records += lost
                    notes.append(
                        f"{why}; its {len(lost)} scheduled requests are recorded as failed "
                        f"({LOST}). The other workers' results are complete."
                    )
    except KeyboardInterrupt:
        stopped = time.perf_counter_ns()
        for a in actors:
            a.stop.remote()
        for ref in list(pending):
            try:
                records += ray.get(ref, timeout=60)
            except ray.exceptions.RayError:
                pass
    finally:
        for a in actors:
            ray.kill(a)
    return records, start_ns, stopped, notes

"""CPU time and bytes read by the main process and its DataLoader workers (psutil).

Workers may start and end during a measurement (non-persistent workers restart each epoch),
so a background thread polls the children and keeps the last counters seen for each.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Counters:
    """Cumulative CPU seconds, seconds spent waiting for a free core, and bytes read."""

    cpu_s: float
    disk_read: int | None
    read_chars: int | None
    run_wait_s: float | None = None


def _run_wait_s(pid: int) -> float | None:
    """Seconds the process spent runnable but waiting for a core (Linux schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _counters(proc: psutil.Process) -> Counters:
    with proc.oneshot():
        times = proc.cpu_times()
        try:
            io = proc.io_counters()
            disk, chars = int(io.read_bytes), int(getattr(io, "read_chars", -1))
        except (psutil.AccessDenied, AttributeError, NotImplementedError):
            disk, chars = None, None
    chars_or_none = None if chars == -1 else chars
    return Counters(times.user + times.system, disk, chars_or_none, _run_wait_s(proc.pid))


def io_counters_note() -> str | None:
    """None when per-process read bytes are available here, else why they are not."""
    try:
        psutil.Process().io_counters()
    except (psutil.AccessDenied, AttributeError, NotImplementedError) as exc:
        return f"per-process read bytes are not reported on this system ({type(exc).__name__})"
    return None


@dataclass
class Usage:
    """What the processes used between `ProcessMonitor.start` and `ProcessMonitor.stop`."""

    main_cpu_s: float
    main_run_wait_s: float | None
    workers_cpu_s: float
    workers_run_wait_s: float | None
    workers_seen: int
    disk_read_bytes: int | None
    read_call_bytes: int | None


@dataclass
class ProcessMonitor:
    """Polls the main process's children every `interval_s` while running."""

    exclude: set[int] = field(default_factory=set)
    interval_s: float = 0.02
    _main: psutil.Process = field(default_factory=psutil.Process)
    _first: dict[int, Counters] = field(default_factory=dict)
    _last: dict[int, Counters] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _main_start: Counters | None = None
    timeline: list[tuple[float, float]] = field(default_factory=list)

    def start(self) -> None:
        """Take the starting counters and begin polling."""
        self._main_start = _counters(self._main)
        self._poll()
        self._thread = threading.Thread(target=self._run, name="deploylab-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def _poll(self) -> None:
        now = time.perf_counter()
        try:
            children = self._main.children(recursive=True)
            times = self._main.cpu_times()
        except psutil.Error:
            return
        for child in children:
            if child.pid in self.exclude:
                continue
            try:
                counters = _counters(child)
            except psutil.Error:
                continue  # ended between listing and reading
            self._first.setdefault(child.pid, counters)
            self._last[child.pid] = counters
        workers = sum(c.cpu_s - self._first[p].cpu_s for p, c in self._last.items())
        self.timeline.append((now, times.user + times.system + workers))

    def close(self) -> None:
        """Stop polling without computing usage (safe to call more than once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> Usage:
        """Stop polling and return the usage since `start`."""
        self._poll()
        self.close()
        assert self._main_start is not None, "stop() before start()"
        main_end = _counters(self._main)
        start, workers = self._main_start, list(self._first)
        workers_cpu = sum(self._last[p].cpu_s - self._first[p].cpu_s for p in workers)
        disk = _delta(start.disk_read, main_end.disk_read)
        chars = _delta(start.read_chars, main_end.read_chars)
        run_wait: float | None = 0.0
        for pid in workers:
            first, last = self._first[pid], self._last[pid]
            disk = _add(disk, _delta(first.disk_read, last.disk_read))
            chars = _add(chars, _delta(first.read_chars, last.read_chars))
            wait = None if first.run_wait_s is None else _delta_f(first.run_wait_s, last.run_wait_s)
            run_wait = None if run_wait is None or wait is None else run_wait + wait
        main_wait = (
            None if start.run_wait_s is None else _delta_f(start.run_wait_s, main_end.run_wait_s)
        )
        return Usage(
            main_end.cpu_s - start.cpu_s,
            main_wait,
            workers_cpu,
            run_wait,
            len(workers),
            disk,
            chars,
        )


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def _delta_f(a: float, b: float | None) -> float | None:
    return None if b is None else b - a


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b

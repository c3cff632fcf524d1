"""Timing a DataLoader (with an optional training step) and always cleaning up its workers."""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from deploylab.dataloader.monitor import ProcessMonitor, Usage
from deploylab.dataloader.precision import ratio_half_width, relative_half_width
from deploylab.dataloader.report import Measurement
from deploylab.dataloader.usercode import user_code
from deploylab.errors import UsageError

Step = Callable[[Any], Any]

# Batches the sampler can serve: more than any run takes (runs end by steps and time).
_ENDLESS = 2**40

# Seconds a worker gets to exit after the loader is shut down, before it is killed.
_REAP_TIMEOUT_S = 3.0


class CyclingSampler(Sampler[int]):
    """`total` indices: passes over `base` (or over `range(length)`, shuffled or not) repeated."""

    def __init__(
        self, length: int, total: int, shuffle: bool, base: Sampler[Any] | None = None
    ) -> None:
        self.length, self.total, self.shuffle, self.base = length, total, shuffle, base

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Any]:
        rng = np.random.default_rng()
        produced = 0
        while produced < self.total:
            if self.base is not None:
                epoch: Any = iter(self.base)
            else:
                epoch = rng.permutation(self.length) if self.shuffle else range(self.length)
            empty = True
            for index in epoch:
                empty = False
                yield int(index) if isinstance(index, int | np.integer) else index
                produced += 1
                if produced >= self.total:
                    return
            if empty:
                raise UsageError("The DataLoader's sampler yields no indices: nothing to time.")


def loader_batch_size(kwargs: Mapping[str, Any]) -> int | None:
    """The batch size the DataLoader will use (None: no batching, or set by a batch_sampler)."""
    if "batch_sampler" in kwargs and kwargs["batch_sampler"] is not None:
        return None
    return kwargs.get("batch_size", 1)


class Endless(IterableDataset[Any]):
    """An IterableDataset started again each time it ends, so a run never stops mid-way."""

    def __init__(self, dataset: IterableDataset[Any]) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[Any]:
        while True:
            empty = True
            for item in self.dataset:
                empty = False
                yield item
            if empty:
                raise UsageError("The IterableDataset yields no samples: nothing to time.")


def build_loader(
    dataset: Dataset[Any], loader_kwargs: Mapping[str, Any], batches: int
) -> DataLoader[Any]:
    """The user's DataLoader, with a sampler that lasts for `batches` batches (an
    IterableDataset is instead restarted whenever it ends)."""
    kwargs = dict(loader_kwargs)
    if isinstance(dataset, IterableDataset):
        return _make_loader(Endless(dataset), kwargs, loader_kwargs)
    length = len(dataset)  # type: ignore[arg-type]
    batch_sampler = kwargs.pop("batch_sampler", None)
    if batch_sampler is not None:
        kwargs["batch_sampler"] = CyclingSampler(length, batches, False, batch_sampler)
    else:
        shuffle = bool(kwargs.pop("shuffle", False))
        per_batch = kwargs.get("batch_size", 1) or 1
        kwargs["sampler"] = CyclingSampler(
            length, batches * per_batch, shuffle, kwargs.pop("sampler", None)
        )
        kwargs["drop_last"] = False
    return _make_loader(dataset, kwargs, loader_kwargs)


def _make_loader(
    dataset: Dataset[Any], kwargs: dict[str, Any], loader_kwargs: Mapping[str, Any]
) -> DataLoader[Any]:
    try:
        with _more_workers_than_cores_is_fine():
            return DataLoader(dataset, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"torch's DataLoader rejected the loader settings {sorted(loader_kwargs)}: {exc}. "
            "Pass only DataLoader keyword arguments with valid values."
        ) from exc


@contextmanager
def _more_workers_than_cores_is_fine() -> Iterator[None]:
    """Silence torch's warning about more workers than cores: deliberate for I/O-bound
    loaders and in worker sweeps."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*worker processes in total.*")
        yield


def _batch_len(batch: Any, default: int) -> int:
    """Samples in a batch: the first dimension of its first tensor, else `default`."""
    if isinstance(batch, torch.Tensor | np.ndarray) and batch.ndim > 0:
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for value in batch.values():
            return _batch_len(value, default)
    if isinstance(batch, tuple | list) and batch:
        return _batch_len(batch[0], default)
    return default


@contextmanager
def _sigchld_ignored() -> Iterator[None]:
    """Hold off torch's SIGCHLD handler while we reap workers ourselves.

    A loader interrupted while it starts (Ctrl-C inside `iter(loader)`) leaves its workers
    registered with torch's handler, which raises "worker killed by signal" when we stop
    them and so would replace the user's KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if previous is None else previous)


def shutdown_workers(iterator: Any, before: set[int]) -> None:
    """Stop the loader's workers and kill any child process it left behind."""
    with _sigchld_ignored():
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        try:
            left = [p for p in psutil.Process().children() if p.pid not in before]
        except psutil.Error:  # pragma: no cover
            return
        _reap(left)


def _reap(left: list[psutil.Process]) -> None:
    """Terminate the given processes, then kill those still alive after the grace period."""
    for proc in left:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=_REAP_TIMEOUT_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=_REAP_TIMEOUT_S)


def measure(
    dataset: Dataset[Any],
    loader_kwargs: Mapping[str, Any],
    step: Step | None,
    steps: int,
    warmup: int,
    what: str = "your dataset",
    min_seconds: float = 0.0,
    precision: float | None = None,
    max_seconds: float = math.inf,
    reference_rate: float | None = None,
) -> Measurement:
    """Run `warmup` steps (next batch + `step(batch)`), then measure at least `steps` steps
    lasting at least `min_seconds`; with `precision`, keep going until the 95% confidence
    interval of the time per sample is within +-`precision` of the time per sample at
    `reference_rate` (default: this run's own rate), or `max_seconds` have passed."""
    batch_size = loader_batch_size(loader_kwargs)
    by_sampler = loader_kwargs.get("batch_sampler") is not None
    if isinstance(dataset, IterableDataset) and batch_size is None:
        by_sampler = True  # a pipeline that batches itself: count the batches' first dimension
    block = max(1, int(loader_kwargs.get("num_workers", 0) or 0))
    ci: float | None = None
    cpu_ci: float | None = None
    marks: list[tuple[float, int]] = []
    target = precision
    loader = build_loader(dataset, loader_kwargs, _ENDLESS)
    before = {p.pid for p in psutil.Process().children()}
    waits: list[float] = []
    totals: list[float] = []
    samples = 0
    iterator: Any = None
    monitor = ProcessMonitor(exclude=before)
    try:
        with user_code(f"{what} (or its DataLoader settings)"), _more_workers_than_cores_is_fine():
            iterator = iter(loader)
        index = 0
        while True:
            if index == warmup:
                monitor.start()
                start = time.perf_counter()
            elif index >= warmup + steps and _done(
                totals, block, time.perf_counter() - start, min_seconds, target, max_seconds
            ):
                break
            t0 = time.perf_counter()
            with user_code(what):
                batch = next(iterator)
            t1 = time.perf_counter()
            if step is not None:
                with user_code("your training step"):
                    step(batch)
                    if torch.cuda.is_initialized():  # the step's GPU work counts in its time
                        torch.cuda.synchronize()
            t2 = time.perf_counter()
            if index == warmup + steps - 1 and precision is not None:
                target = _target(precision, reference_rate, samples, t2 - start)
            if index >= warmup:
                waits.append(t1 - t0)
                totals.append(t2 - t0)
                # batch_size=None turns batching off: each step is one sample.
                samples += _batch_len(batch, 1) if by_sampler else (batch_size or 1)
                marks.append((t2, samples))
            index += 1
        elapsed = time.perf_counter() - start
        usage = monitor.stop()
        ci = relative_half_width(totals, block)
        cpu_ci = ratio_half_width(monitor.timeline, marks)
    finally:
        try:
            monitor.close()
        finally:
            shutdown_workers(iterator, before)
    return _measurement(totals, waits, samples, elapsed, warmup, usage, ci, cpu_ci)


def _measurement(
    totals: list[float],
    waits: list[float],
    samples: int,
    elapsed: float,
    warmup: int,
    usage: Usage,
    ci: float | None,
    cpu_ci: float | None,
) -> Measurement:
    """The `Measurement` of a finished run from its step times and the processes' usage."""
    return Measurement(
        steps=len(totals),
        warmup_steps=warmup,
        samples=samples,
        elapsed_s=elapsed,
        samples_per_s=samples / elapsed if elapsed > 0 else math.inf,
        step_time_ms=1000 * float(np.mean(totals)),
        step_time_p90_ms=1000 * float(np.percentile(totals, 90)),
        rate_ci=ci,
        cpu_ci=cpu_ci,
        data_wait_share=float(sum(waits) / elapsed) if elapsed > 0 else 0.0,
        main_cpu_percent=100 * usage.main_cpu_s / elapsed,
        workers_cpu_percent=100 * usage.workers_cpu_s / elapsed,
        main_cpu_wait_percent=(
            None if usage.main_run_wait_s is None else 100 * usage.main_run_wait_s / elapsed
        ),
        workers_cpu_wait_percent=(
            None if usage.workers_run_wait_s is None else 100 * usage.workers_run_wait_s / elapsed
        ),
        cpu_ms_per_sample=1000 * (usage.main_cpu_s + usage.workers_cpu_s) / max(samples, 1),
        workers_seen=usage.workers_seen,
        disk_read_bytes=usage.disk_read_bytes,
        read_call_bytes=usage.read_call_bytes,
    )


def _target(precision: float, reference_rate: float | None, samples: int, elapsed: float) -> float:
    """The relative precision this run needs so its time per sample is known within
    `precision` of the reference's: a run much faster than the reference needs less."""
    if reference_rate is None or samples <= 0 or elapsed <= 0:
        return precision
    return precision * max(1.0, (samples / elapsed) / reference_rate)


def _done(
    totals: list[float],
    block: int,
    elapsed: float,
    min_seconds: float,
    precision: float | None,
    max_seconds: float,
) -> bool:
    """Whether a run with enough steps may stop: time is up, or its rate is precise enough."""
    if elapsed < min_seconds:
        return False
    if precision is None or elapsed >= max_seconds:
        return True
    # Checking every step would cost O(n^2); every `block` steps is often enough.
    if len(totals) % block:
        return False
    ci = relative_half_width(totals, block)
    return ci is not None and ci <= precision


def default_warmup(loader_kwargs: Mapping[str, Any]) -> int:
    """Enough warm-up steps to start the workers and fill their prefetch queue."""
    workers = int(loader_kwargs.get("num_workers", 0) or 0)
    prefetch = int(loader_kwargs.get("prefetch_factor", 2) or 2)
    return max(3, workers * prefetch + 1)

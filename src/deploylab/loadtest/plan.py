"""Turn a scenario and a load into per-worker tasks: the work generator, the precomputed send
schedule (open loop, trace) or the slots (closed loop), and each worker's share of the budget.

Work is split round-robin by item index, so worker w of W handles items w, w + W, ...; sessions
stay whole inside one worker.
"""

from __future__ import annotations

from typing import Any

from deploylab.errors import UsageError
from deploylab.loadtest.arrivals import closed_loop_starts, send_offsets
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.scenario import RequestOptions, Scenario
from deploylab.loadtest.text import WordSet
from deploylab.loadtest.traces import TraceEntry
from deploylab.loadtest.worker import WorkerTask
from deploylab.loadtest.workload import (
    MultiLoraGenerator,
    MultiModelGenerator,
    SessionsGenerator,
    SyntheticGenerator,
    WorkloadGenerator,
)
from deploylab.loadtest.workload_rag import RagGenerator
from deploylab.loadtest.workload_replay import ReplayGenerator


def make_generator(
    scenario: Scenario, words: WordSet, seed: int, trace: list[TraceEntry] | None = None
) -> WorkloadGenerator:
    """The work generator of a scenario (replay needs the trace's entries)."""
    spec = scenario.workload
    if spec.kind == "synthetic":
        return SyntheticGenerator(spec, words, seed)
    if spec.kind == "rag":
        return RagGenerator(spec, words, seed)
    if spec.kind == "sessions":
        return SessionsGenerator(spec, words, seed)
    if spec.kind == "multi-model":
        return MultiModelGenerator(spec, words, seed)
    if spec.kind == "multi-lora":
        return MultiLoraGenerator(spec, words, seed)
    if trace is None:
        raise UsageError(f"Scenario '{scenario.name}' replays a trace: give one with --trace FILE.")
    return ReplayGenerator(spec, trace, words, seed)


def body_options(request: RequestOptions) -> dict[str, Any]:
    """Fields added to every request body."""
    options: dict[str, Any] = {"temperature": request.temperature}
    if request.ignore_eos:
        options["ignore_eos"] = True
    options.update(request.extra_body)
    return options


def _share(total: int | None, workers: int, w: int) -> int | None:
    if total is None:
        return None
    return total // workers + (1 if w < total % workers else 0)


def _schedule(load: LoadConfig, generator: WorkloadGenerator) -> list[float]:
    """Send offsets of items 0, 1, ... for the open-loop and trace modes."""
    recorded = generator.recorded_offsets()
    if load.mode == "trace":
        if recorded is None:
            raise UsageError(
                "Give --rate (open loop) or --concurrency (closed loop): this scenario sets "
                "neither, and only trace replay can run without one."
            )
        offsets = recorded
    elif recorded is not None:  # replay at a chosen mean rate: rescale the recorded times
        assert load.rate is not None
        span = recorded[-1] if recorded[-1] > 0 else 1.0
        scale = (len(recorded) / span) / load.rate
        offsets = [t * scale for t in recorded]
    else:
        assert load.rate is not None
        return send_offsets(
            load.rate,
            load.arrival,
            gamma_shape=load.gamma_shape,
            ramp_up_s=load.ramp_up_s,
            duration_s=load.duration_s,
            count=load.requests,
            seed=load.seed,
        ).tolist()
    if load.duration_s is not None:
        offsets = [t for t in offsets if t < load.duration_s]
    if load.requests is not None:
        offsets = offsets[: load.requests]
    return offsets


def worker_tasks(
    load: LoadConfig,
    generator: WorkloadGenerator,
    *,
    url: str,
    api: str,
    default_model: str,
    model_map: dict[str, str],
    options: dict[str, Any],
    keep_text: bool,
    turn_classes: bool,
) -> list[WorkerTask]:
    """One task per worker process."""
    n = load.workers
    if load.mode == "closed":
        assert load.concurrency is not None
        if n > load.concurrency:
            raise UsageError(
                f"--workers {n} exceeds --concurrency {load.concurrency}: each worker needs at "
                "least one slot. Use fewer workers."
            )
    recorded = generator.recorded_offsets()
    if load.duration_s is None and load.requests is None and recorded is None:
        raise UsageError("Bound the run with --duration SECONDS or --requests N.")
    schedule = [] if load.mode == "closed" else _schedule(load, generator)
    if load.mode != "closed" and not schedule:
        raise UsageError("The schedule is empty: raise --duration, --requests or --rate.")
    budget = load.requests
    if load.mode == "closed" and recorded is not None:
        budget = min(budget or len(recorded), len(recorded))  # replay each entry once
    slots = closed_loop_starts(load.concurrency or 0, load.ramp_up_s)
    tasks = []
    for w in range(n):
        tasks.append(
            WorkerTask(
                worker_id=w,
                url=url,
                api=api,  # type: ignore[arg-type]
                generator=generator,
                mode=load.mode,
                schedule=[(i, t) for i, t in enumerate(schedule) if i % n == w],
                slot_starts=slots[w::n],
                first_index=w,
                index_step=n,
                max_requests=_share(budget, n, w),
                deadline_s=load.duration_s,
                model_map=model_map,
                default_model=default_model,
                body_options=options,
                timeout_s=load.timeout_s,
                keep_text=keep_text,
                turn_classes=turn_classes,
            )
        )
    return tasks

"""Run a load test from Python: `prepare_run` once (tokenizer, trace, target checks), then
`execute` one load as many times as needed (a capacity sweep calls it per step); `run_load`
does both.

`execute` runs worker 0 in this process when `workers == 1`, else one spawned process per
worker, each with its own event loop (uvloop when installed); all start at one shared
perf_counter_ns instant and their records are merged. Ctrl-C (SIGINT) stops sending, cancels
requests in flight and returns the partial results with `interrupted: true`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploylab import __version__
from deploylab.errors import UsageError
from deploylab.loadtest.client import RawRecord
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.fit import check_fit
from deploylab.loadtest.library import LoadedScenario
from deploylab.loadtest.plan import body_options, make_generator, worker_tasks
from deploylab.loadtest.procs import new_runner, run_processes
from deploylab.loadtest.records import (
    mark_first_requests,
    measurement_window,
    output_token_counts,
    to_record,
)
from deploylab.loadtest.results import Results, RunConfig, ScenarioInfo, TargetInfo
from deploylab.loadtest.scenario import LoadDefaults, Scenario
from deploylab.loadtest.scrape import Scraper
from deploylab.loadtest.stats import summarize
from deploylab.loadtest.target import (
    CHECK_TIMEOUT_S,
    endpoint_url,
    models_listing,
    normalize_base_url,
    parse_model_map,
    plan_models,
)
from deploylab.loadtest.text import WordSet, approximate_words, load_tokenizer, words_for_tokenizer
from deploylab.loadtest.traces import TraceEntry, read_trace
from deploylab.loadtest.worker import ProgressFn, WorkerTask, run_worker
from deploylab.loadtest.workload import WorkloadGenerator


@dataclass
class PreparedRun:
    """Everything that does not change between loads of one scenario against one target."""

    loaded: LoadedScenario
    base_url: str
    api: str
    words: WordSet
    tokenizer: Any | None
    tokenizer_name: str | None
    trace: list[TraceEntry] | None
    trace_path: str | None
    target: TargetInfo
    notes: list[str] = field(default_factory=list)  # warnings found before the run


def _trace_for(loaded: LoadedScenario, trace: Path | None) -> tuple[list[TraceEntry], str] | None:
    spec = loaded.scenario.workload
    if spec.kind != "replay":
        if trace is not None:
            raise UsageError(
                f"--trace applies to replay scenarios; '{loaded.scenario.name}' is "
                f"{spec.kind}. Use --scenario replay --trace FILE."
            )
        return None
    if trace is None:
        if spec.trace is None:
            raise UsageError("This replay scenario names no trace: give one with --trace FILE.")
        trace = loaded.folder / spec.trace
    entries, _ = read_trace(trace, spec.format)
    return entries, str(trace)


def prepare_run(
    loaded: LoadedScenario,
    url: str,
    *,
    model: str | None = None,
    model_map: Sequence[str] = (),
    tokenizer: str | None = None,
    trace: Path | None = None,
    api: str | None = None,
    started_locally: bool = False,
    server_command: list[str] | None = None,
    check_timeout_s: float = CHECK_TIMEOUT_S,
) -> PreparedRun:
    """Validate inputs, load the tokenizer and trace, and check the target serves the models
    the scenario needs (`check_timeout_s`: how long `/v1/models` may take; 0 skips the check).
    Raises UsageError / ConfigError / TargetUnreachableError (TargetSlowError: it timed out)."""
    base_url = normalize_base_url(url)
    pairs = parse_model_map(model_map)
    tok, tok_name = load_tokenizer(tokenizer) if tokenizer else (None, None)
    words = words_for_tokenizer(tok, tokenizer or "") if tok is not None else approximate_words()
    traced = _trace_for(loaded, trace)
    entries = traced[0] if traced else None
    probe = make_generator(loaded.scenario, words, 0, entries)
    listing = models_listing(base_url, check_timeout_s)
    served = None if listing is None else list(listing)
    models = plan_models(probe.model_names(), probe.needs_default_model(), served, model, pairs)
    notes = _fit_notes(loaded, probe, listing, models.default_model, models.mapping)
    target = TargetInfo(
        url=base_url,
        models_served=served,
        default_model=models.default_model,
        model_map=models.mapping,
        started_locally=started_locally,
        server_command=server_command,
    )
    return PreparedRun(
        loaded=loaded,
        base_url=base_url,
        api=api or loaded.scenario.request.api,
        words=words,
        tokenizer=tok,
        tokenizer_name=tok_name,
        trace=entries,
        trace_path=traced[1] if traced else None,
        target=target,
        notes=notes,
    )


def _fit_notes(
    loaded: LoadedScenario,
    generator: WorkloadGenerator,
    listing: dict[str, int | None] | None,
    default_model: str,
    mapping: dict[str, str],
) -> list[str]:
    """A warning when the target's advertised context is too short for the scenario."""
    if not listing:
        return []
    used = [default_model, *mapping.values()]
    limits = [n for name in used if (n := listing.get(name)) is not None]
    if not limits:
        return []
    warning = check_fit(generator, min(limits)).warning(loaded.scenario.name)
    return [] if warning is None else [warning]


def _run_in_process(
    task: WorkerTask, progress: ProgressFn | None
) -> tuple[list[RawRecord], int, int | None]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(task, progress)
    # this thread already runs an event loop (a caller's, or a sync API built on one): run
    # the worker's own loop in a helper thread instead
    result: list[tuple[list[RawRecord], int, int | None]] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(_run_here(task, progress))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="deploylab-loadtest-worker-0")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _run_here(
    task: WorkerTask, progress: ProgressFn | None
) -> tuple[list[RawRecord], int, int | None]:
    """Run the worker on a new event loop in this thread; Ctrl-C stops it (main thread).
    Returns the records, the start instant and when Ctrl-C came (None: not interrupted)."""
    state: dict[str, Any] = {}

    async def main() -> list[RawRecord]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:

            def on_sigint() -> None:
                state.setdefault("stopped_ns", time.perf_counter_ns())
                stop.set()

            loop.add_signal_handler(signal.SIGINT, on_sigint)

        async def start() -> int:
            state["start_ns"] = time.perf_counter_ns()
            return int(state["start_ns"])

        try:
            return await run_worker(task, start, stop, progress)
        finally:
            state["interrupted"] = stop.is_set()
            if on_main:
                loop.remove_signal_handler(signal.SIGINT)

    with new_runner() as runner:
        raws = runner.run(main())
    stopped = state.get("stopped_ns", time.perf_counter_ns()) if state["interrupted"] else None
    return raws, int(state["start_ns"]), stopped


def execute(
    prepared: PreparedRun,
    load: LoadConfig,
    progress: ProgressFn | None = None,
    scrape_interval_s: float | None = None,
) -> Results:
    """Run one load against the prepared target and return the results (not saved).
    With `scrape_interval_s`, the target's /metrics is scraped meanwhile (`server_metrics`)."""
    scenario = prepared.loaded.scenario
    generator = make_generator(scenario, prepared.words, load.seed, prepared.trace)
    tasks = worker_tasks(
        load,
        generator,
        url=endpoint_url(prepared.base_url, prepared.api),
        api=prepared.api,
        default_model=prepared.target.default_model,
        model_map=prepared.target.model_map,
        options=body_options(scenario.request),
        keep_text=prepared.tokenizer is not None,
        turn_classes="turn" in scenario.class_keys(),
    )
    scraper = Scraper(prepared.base_url, scrape_interval_s) if scrape_interval_s else None
    if scraper is not None:
        scraper.start()
    started_at = datetime.now(UTC)
    run_notes: list[str] = []
    try:
        if load.ray_address is not None:
            from deploylab.loadtest.ray_workers import run_ray

            raws, start_ns, stopped_ns, run_notes = run_ray(tasks, load.ray_address)
        elif len(tasks) == 1:
            raws, start_ns, stopped_ns = _run_in_process(tasks[0], progress)
        else:
            raws, start_ns, stopped_ns = run_processes(tasks, progress)
    finally:
        if scraper is not None:
            scraper.stop()
    finished_at = datetime.now(UTC)
    raws.sort(key=lambda r: (r.scheduled_ns, r.index, r.turn))
    interrupted = stopped_ns is not None
    window = measurement_window(raws, start_ns, load, stopped_ns)
    outputs = output_token_counts(raws, prepared.tokenizer)
    eos = bool(body_options(scenario.request).get("ignore_eos"))
    records = [
        to_record(r, start_ns, out, window, eos) for r, out in zip(raws, outputs, strict=True)
    ]
    keys = scenario.class_keys()
    if "model_first_request" in keys:
        mark_first_requests(records)
    summary = summarize(records, window, scenario.slo, keys)
    return Results(
        scenario=ScenarioInfo(
            name=scenario.name,
            source=prepared.loaded.source,
            description=scenario.description,
            bottleneck=scenario.bottleneck,
            workload_kind=scenario.workload.kind,
            definition=definition_as_run(scenario, load),
        ),
        target=prepared.target,
        config=RunConfig(
            load=load,
            mode=load.mode,
            api=prepared.api,
            tokenizer=prepared.tokenizer_name,
            exact_token_counts=prepared.words.exact,
            trace=prepared.trace_path,
            slo_profile=prepared.loaded.slo_profile,
            deploylab_version=__version__,
        ),
        started_at=started_at,
        finished_at=finished_at,
        interrupted=interrupted,
        notes=[*prepared.notes, *run_notes],
        summary=summary,
        requests=records,
        server_metrics=None if scraper is None else scraper.result(start_ns),
    )


def definition_as_run(scenario: Scenario, load: LoadConfig) -> dict[str, Any]:
    """The scenario as it ran: its `load` section holds the load actually offered (command-line
    overrides applied), not the scenario file's defaults."""
    definition = scenario.model_dump(mode="json", by_alias=True)
    ran = load.model_dump(mode="json")
    definition["load"] = {k: ran[k] for k in LoadDefaults.model_fields if k in ran}
    return definition


def run_load(
    loaded: LoadedScenario,
    url: str,
    load: LoadConfig,
    *,
    progress: ProgressFn | None = None,
    **prepare_options: Any,
) -> Results:
    """Prepare and execute one load (see `prepare_run` for the options)."""
    return execute(prepare_run(loaded, url, **prepare_options), load, progress)

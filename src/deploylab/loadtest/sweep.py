"""Capacity search: the highest request rate (or concurrency) at which a scenario's SLOs hold.

By rate: a saturation probe first runs a closed loop at a high concurrency to measure the most
the target can deliver (requests/s); that rate is the first open-loop load tried. By
concurrency: the first load is `start` (default: the scenario's concurrency, else 4).

Then a bracket: after a pass the load grows (by rate x1.5; by concurrency by 1/margin, 2x to
8x), after a miss it halves, until one load passed and a higher one missed. Then an
interpolating search inside the bracket: the next load is where the line through the two
ends' SLO margins (worst measured/limit, 1 = at the limit) crosses 1, kept at least a quarter
of the bracket away from either end (so the bracket shrinks by a quarter or more per step),
with a plain bisection when the same end held twice in a row. It stops when the bracket is
narrower than `tolerance` (relative; by concurrency, also when the ends are neighbours) or
after `max_steps` loads in all, the probe included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from deploylab.errors import DeploylabError, UsageError
from deploylab.loadtest.capacity import Capacity, CapacityStep, Limit, StepCheck
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.results import Results

By = Literal["rate", "concurrency"]
RunStep = Callable[[LoadConfig], Results]
OnStep = Callable[[CapacityStep], None]

_KEEP_AWAY = 0.25  # interpolated points stay this share of the bracket away from its ends
_KEPT_UP = 0.95  # a passing rate step that completed less than this share of its offer fell behind
_STEP_E2E = 5.0  # a step's window should be at least this many E2E p99s long


@dataclass(frozen=True)
class SweepOptions:
    """How the search runs (see the module docstring)."""

    by: By = "rate"
    max_steps: int = 12
    tolerance: float = 0.05
    start: float | None = None
    probe_concurrency: int = 64
    max_load: float | None = None

    def check(self) -> None:
        """UsageError for settings that cannot work."""
        if self.by not in ("rate", "concurrency"):
            raise UsageError(f"--by '{self.by}' is not one of rate, concurrency.")
        if self.max_steps < 3:
            raise UsageError(f"--max-steps {self.max_steps} is too few: give 3 or more.")
        if not 0 < self.tolerance < 1:
            raise UsageError(f"--tolerance {self.tolerance:g} must be between 0 and 1 (e.g. 0.05).")
        if self.probe_concurrency < 1:
            raise UsageError("--probe-concurrency must be at least 1.")
        for name, value in (("--start", self.start), ("--max-load", self.max_load)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive.")


def margin_of(checks: list[StepCheck]) -> float | None:
    """Worst measured/limit over the checks (inf for an error rate over a zero limit)."""
    worst: float | None = None
    for c in checks:
        if c.measured is None:
            continue
        if c.limit > 0:
            ratio = c.measured / c.limit
        else:
            ratio = math.inf if c.measured > 0 else 0.0
        worst = ratio if worst is None else max(worst, ratio)
    return worst


def step_from(results: Results, index: int, phase: Literal["probe", "search"]) -> CapacityStep:
    """A step's summary from a run's results."""
    s, load = results.summary, results.config.load
    checks = [StepCheck(**c.model_dump()) for c in s.slo]
    verdicts = [c.passed for c in checks]
    passed = None if not checks or any(v is None for v in verdicts) else all(verdicts)
    return CapacityStep(
        index=index,
        phase=phase,
        mode="closed" if load.concurrency is not None else "open",
        load=float(load.concurrency if load.concurrency is not None else load.rate or 0.0),
        passed=passed,
        margin=margin_of(checks),
        requests_completed=s.requests_completed,
        requests_failed=s.requests_failed,
        requests_per_s=s.requests_per_s,
        goodput_rps=s.goodput_rps,
        output_tokens_per_s=s.output_tokens_per_s,
        error_rate=s.error_rate,
        ttft_ms_p50=s.ttft_response_ms.p50,
        ttft_ms_p99=s.ttft_response_ms.p99,
        e2e_ms_p50=s.e2e_response_ms.p50,
        e2e_ms_p99=s.e2e_response_ms.p99,
        checks=checks,
    )


class _Search:
    def __init__(self, run: RunStep, base: LoadConfig, options: SweepOptions, on_step: OnStep):
        self.run, self.base, self.opt, self.on_step = run, base, options, on_step
        self.integer = options.by == "concurrency"
        self.steps: list[CapacityStep] = []
        self.best: tuple[CapacityStep, Results] | None = None  # highest pass
        self.fallback: Results | None = None  # the lowest miss, if nothing passes
        self.lo: CapacityStep | None = None
        self.hi: CapacityStep | None = None
        self.kept: list[str] = []  # which end each search step kept

    def left(self) -> int:
        return self.opt.max_steps - len(self.steps)

    def load_config(self, x: float, closed: bool) -> LoadConfig:
        update: dict[str, float | int | None] = (
            {"concurrency": int(x), "rate": None} if closed else {"rate": x, "concurrency": None}
        )
        return LoadConfig.model_validate(self.base.model_dump() | update)

    def measure(self, x: float, phase: Literal["probe", "search"], closed: bool) -> CapacityStep:
        results = self.run(self.load_config(x, closed))
        step = step_from(results, len(self.steps), phase)
        self.steps.append(step)
        self.on_step(step)
        if phase == "probe" and self.opt.by == "rate":
            return step
        if step.passed:
            if self.best is None or step.load > self.best[0].load:
                self.best = (step, results)
            if self.lo is None or step.load > self.lo.load:
                self.lo = step
        else:
            if self.hi is None or step.load < self.hi.load:
                self.hi = step
                self.fallback = results
        return step

    def converged(self) -> bool:
        assert self.lo is not None and self.hi is not None
        gap = self.hi.load - self.lo.load
        if self.integer and gap <= 1:
            return True
        return gap <= self.opt.tolerance * self.hi.load

    def bracket(self, x: float, min_load: float, max_load: float) -> None:
        closed = self.integer
        while self.left() > 0:
            step = self.measure(x, "search", closed)
            if self.lo is not None and self.hi is not None:
                return
            if step.passed:
                if x >= max_load:
                    return
                grow = 1.5 if not self.integer else min(8.0, max(2.0, 1 / (step.margin or 0.125)))
                x = min(max_load, x * grow)
            else:
                if x <= min_load:
                    return
                x = max(min_load, x / 2)
            if self.integer:
                x = float(max(1, round(x)))

    def next_point(self) -> float:
        assert self.lo is not None and self.hi is not None
        lo, hi = self.lo.load, self.hi.load
        span = hi - lo
        m_lo, m_hi = self.lo.margin, self.hi.margin
        bisect = self.kept[-2:] in (["lo", "lo"], ["hi", "hi"])
        if bisect or m_lo is None or m_hi is None or not math.isfinite(m_hi) or m_hi <= m_lo:
            x = lo + span / 2
        else:
            x = lo + span * (1 - m_lo) / (m_hi - m_lo)
            x = min(max(x, lo + _KEEP_AWAY * span), hi - _KEEP_AWAY * span)
        if self.integer:
            x = float(min(max(round(x), int(lo) + 1), int(hi) - 1))
        return x

    def search(self) -> None:
        while self.left() > 0 and self.lo is not None and self.hi is not None:
            if self.converged():
                return
            lo_before = self.lo
            self.measure(self.next_point(), "search", self.integer)
            self.kept.append("hi" if self.lo is not lo_before else "lo")


def sustained(step: CapacityStep) -> float:
    """The load a passing step was measured to hold: by rate, the lower of the offered rate and
    the rate it completed (a short step can pass an offer the target did not keep up with)."""
    if step.mode == "open" and step.requests_per_s is not None:
        return min(step.load, step.requests_per_s)
    return step.load


def _capacity_value(steps: list[CapacityStep]) -> float | None:
    """The highest load a passing search step was measured to hold."""
    held = [sustained(st) for st in steps if st.phase == "search" and st.passed]
    return max(held) if held else None


def stability_notes(steps: list[CapacityStep], base: LoadConfig) -> list[str]:
    """Plain-language reasons why the capacity found may not be stable."""
    notes = []
    window = None
    if base.duration_s is not None:
        window = base.duration_s - base.warmup_s - base.cooldown_s
    for st in steps:
        if st.phase != "search" or not st.passed or st.mode != "open":
            continue
        done = st.requests_per_s
        if done is not None and done < _KEPT_UP * st.load:
            notes.append(
                f"step {st.index} passed at {st.load:.4g} req/s offered but completed only "
                f"{done:.4g} req/s: the step was too short for a queue to build up, so the "
                f"capacity is capped at what was measured to hold. Give longer steps "
                f"(--duration) for a stable answer."
            )
    e2e = max((st.e2e_ms_p99 or 0.0 for st in steps if st.phase == "search"), default=0.0)
    if window is not None and e2e > 0 and window < _STEP_E2E * e2e / 1000:
        enough = base.warmup_s + base.cooldown_s + _STEP_E2E * e2e / 1000
        notes.append(
            f"each step measures {window:.3g} s, less than {_STEP_E2E:g} x the E2E p99 seen "
            f"({e2e / 1000:.3g} s): rates just above capacity can pass before their queue "
            f"grows. Give --duration of at least {enough:.0f} s."
        )
    return notes


def search_capacity(
    run: RunStep,
    base: LoadConfig,
    options: SweepOptions,
    on_step: OnStep | None = None,
) -> tuple[Capacity, Results]:
    """Search the capacity; `run` executes one load. Returns the capacity section and the full
    results of the step at capacity (or, if no load passed, of the lowest one tried)."""
    options.check()
    search = _Search(run, base, options, on_step or (lambda step: None))
    saturation: float | None = None
    if options.by == "rate":
        probe = search.measure(float(options.probe_concurrency), "probe", closed=True)
        saturation = probe.requests_per_s
        if not saturation:
            raise DeploylabError(
                f"The saturation probe (concurrency {options.probe_concurrency}) completed no "
                "request, so there is no rate to start from; check the target and the results "
                "of a plain `deploylab loadtest` run."
            )
        start = options.start or saturation
        min_load, max_load = start / 64, options.max_load or math.inf
    else:
        start = options.start or float(base.concurrency or 4)
        min_load, max_load = 1.0, options.max_load or 4096.0
    start = min(start, max_load)
    search.bracket(float(round(start)) if search.integer else start, min_load, max_load)
    search.search()
    lo, hi = search.lo, search.hi
    limited: Limit = "slo"
    if lo is None:
        limited = "no_passing_load"
    elif hi is None:
        limited = "max_load" if lo.load >= max_load else "max_steps"
    if search.best is not None:
        chosen_step, chosen = search.best
    else:  # nothing passed: the lowest miss (at least one search step ran: max_steps >= 3)
        assert hi is not None and search.fallback is not None
        chosen_step, chosen = hi, search.fallback
    capacity = Capacity(
        by=options.by,
        unit="req/s" if options.by == "rate" else "concurrent requests",
        capacity=_capacity_value(search.steps),
        highest_passed=None if lo is None else lo.load,
        lowest_failed=None if hi is None else hi.load,
        limited_by=limited,
        saturation_rps=saturation,
        probe_concurrency=options.probe_concurrency if options.by == "rate" else None,
        tolerance=options.tolerance,
        max_steps=options.max_steps,
        steps=search.steps,
        result_step=chosen_step.index,
        notes=stability_notes(search.steps, base),
    )
    return capacity, chosen

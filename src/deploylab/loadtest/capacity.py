"""The results' `capacity` section: what a capacity search (`deploylab loadtest sweep`) tried
and what it found. Filled by `sweep.py`; rendered as the latency-vs-load curve."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Limit = Literal["slo", "max_load", "max_steps", "no_passing_load"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepCheck(_Model):
    """One SLO bound at one step: the measured value and the limit."""

    metric: str  # ttft_ms, itl_ms, tpot_ms, e2e_ms or error_rate
    percentile: float | None
    limit: float
    measured: float | None
    passed: bool | None


class CapacityStep(_Model):
    """One load the search ran. Latencies are response times (from the scheduled send), the
    ones the SLO is checked on."""

    index: int
    phase: Literal["probe", "search"]
    mode: Literal["closed", "open"]
    load: float  # offered: requests/s (rate) or requests in flight (concurrency)
    passed: bool | None  # every SLO held (None: nothing measured)
    margin: float | None  # worst measured/limit over the SLO bounds (<= 1 passes)
    requests_completed: int
    requests_failed: int
    requests_per_s: float | None  # achieved
    goodput_rps: float | None
    output_tokens_per_s: float | None
    error_rate: float | None
    ttft_ms_p50: float | None
    ttft_ms_p99: float | None
    e2e_ms_p50: float | None
    e2e_ms_p99: float | None
    checks: list[StepCheck] = Field(default_factory=list)


class Capacity(_Model):
    """The highest load at which every SLO of the scenario held."""

    by: Literal["rate", "concurrency"]
    unit: str  # req/s or concurrent requests
    # never above a rate measured to hold: by rate, the lower of the highest passing offered
    # rate and what that step completed per second; None: even the lowest load tried missed
    capacity: float | None
    highest_passed: float | None  # offered load of the highest passing step
    lowest_failed: float | None
    # slo: a passing and a missing load bracket it; max_load / max_steps: the search stopped
    # before any load missed; no_passing_load: even the lowest load tried missed
    limited_by: Limit
    saturation_rps: float | None  # throughput of the saturation probe (by rate)
    probe_concurrency: int | None
    tolerance: float  # the search stops when the bracket is this narrow (relative)
    max_steps: int
    steps: list[CapacityStep]
    result_step: int  # the step whose full results are in this file
    # why the answer may not be stable (steps too short, a passing step that fell behind)
    notes: list[str] = Field(default_factory=list)

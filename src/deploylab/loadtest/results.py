"""The results file (`DIR/results.json`): a versioned pydantic schema, documented in
docs/loadtest.md. Times are milliseconds unless a name says otherwise; `*_s` fields of a
request are seconds since the run's start. `server_metrics` and `capacity` are filled by the
parts that scrape the target and search capacity; a plain run leaves them null."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploylab.errors import ConfigError
from deploylab.loadtest.capacity import Capacity
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.scrape import ServerMetrics

RESULTS_SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyStats(_Model):
    """Distribution of one latency over the measured requests (null when there were none)."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


class SLOCheck(_Model):
    """One SLO bound and what the run measured for it."""

    metric: str  # ttft_ms, itl_ms, tpot_ms, e2e_ms or error_rate
    percentile: float | None  # None for error_rate
    limit: float
    measured: float | None
    passed: bool | None  # None: nothing measured


class ClassSummary(_Model):
    """The same statistics restricted to one value of one request class."""

    requests_completed: int
    requests_failed: int
    ttft_ms: LatencyStats
    itl_ms: LatencyStats
    tpot_ms: LatencyStats
    e2e_ms: LatencyStats
    ttft_response_ms: LatencyStats
    e2e_response_ms: LatencyStats
    slo_attainment: float | None  # share of completed requests meeting every SLO


class Summary(_Model):
    """Aggregates over the measurement window (warm-up and cool-down excluded)."""

    requests_completed: int
    requests_failed: int
    requests_cancelled: int = 0  # in flight when the run was interrupted
    requests_excluded: int = 0  # sent during warm-up or cool-down
    excluded_failed: int = 0  # of those, how many failed
    excluded_errors_by_kind: dict[str, int] = Field(default_factory=dict)
    requests_short: int = 0  # completed-short: stopped early although ignore_eos was asked
    ttft_ms: LatencyStats  # service time: from the actual send
    itl_ms: LatencyStats
    tpot_ms: LatencyStats
    e2e_ms: LatencyStats
    ttft_response_ms: LatencyStats  # response time: from the scheduled send
    e2e_response_ms: LatencyStats
    schedule_lateness_ms: LatencyStats  # actual send minus scheduled send
    # the same per load-generating worker ("0", "1", ...): an overloaded client shows here
    lateness_by_worker_ms: dict[str, LatencyStats] = Field(default_factory=dict)
    output_tokens_per_s: float | None  # tokens that arrived inside the window, per second
    output_tokens_per_s_run: float | None = None  # every token of the run / run_s
    run_s: float | None = None  # first send to last answer's end
    output_tokens_sources: dict[str, int] = Field(default_factory=dict)  # usage|tokenizer|chunks
    requests_per_s: float | None
    goodput_rps: float | None  # completed requests meeting every SLO, per second
    error_rate: float | None
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    output_tokens_total: int = 0
    input_tokens_mean: float | None = None
    window_s: tuple[float, float]  # measured window, seconds since the start
    slo: list[SLOCheck] = Field(default_factory=list)
    slo_passed: bool | None = None
    slo_attainment: float | None = None
    classes: dict[str, dict[str, ClassSummary]] = Field(default_factory=dict)


class RequestRecord(_Model):
    """One request as measured. Latencies are from the actual send unless `_response_`."""

    id: int  # work item index
    turn: int
    worker: int
    session: str | None
    model: str
    classes: dict[str, str]
    scheduled_s: float
    sent_s: float
    lateness_ms: float
    in_window: bool
    ok: bool
    error_kind: str | None
    error_detail: str | None
    status: int | None
    ttft_ms: float | None
    ttft_response_ms: float | None
    e2e_ms: float
    e2e_response_ms: float
    tpot_ms: float | None
    itl_ms: list[float]
    chunk_times_ms: list[float]  # arrival of every text-carrying chunk, from the actual send
    input_tokens: int
    input_tokens_source: str  # usage | planned
    output_tokens: int
    output_tokens_source: str  # usage | tokenizer | chunks
    max_tokens: int
    finish_reason: str | None = None  # the first choice's (None: the answer gave none)
    completed_short: bool = False  # stopped before max_tokens although ignore_eos was asked


class ScenarioInfo(_Model):
    name: str
    source: str
    description: str
    bottleneck: str
    workload_kind: str
    definition: dict[str, Any]  # the full scenario as run


class TargetInfo(_Model):
    url: str
    models_served: list[str] | None  # from /v1/models; None if the target has no such route
    default_model: str
    model_map: dict[str, str]
    started_locally: bool = False
    server_command: list[str] | None = None


class RunConfig(_Model):
    load: LoadConfig
    mode: str
    api: str
    tokenizer: str | None
    exact_token_counts: bool
    trace: str | None = None
    slo_profile: str | None = None  # --slo-profile; None: the scenario's default SLOs
    deploylab_version: str


class Results(_Model):
    """Everything a run produced."""

    schema_version: int = RESULTS_SCHEMA_VERSION
    scenario: ScenarioInfo
    target: TargetInfo
    config: RunConfig
    started_at: datetime
    finished_at: datetime
    interrupted: bool = False
    notes: list[str] = Field(default_factory=list)  # warnings found before the run
    summary: Summary
    requests: list[RequestRecord]
    server_metrics: ServerMetrics | None = None  # the target's Prometheus series (scrape.py)
    capacity: Capacity | None = None  # capacity search result (sweep.py)

    def save(self, out_dir: Path) -> Path:
        """Write `out_dir/results.json` (creating the folder); return its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / RESULTS_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        tmp.replace(path)
        return path


def load_results(path: Path) -> Results:
    """Read a results file; a file of another schema version fails with a message naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"results file {path} does not exist.") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"results file {path} is not readable JSON: {exc}") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        raise ConfigError(
            f"results file {path} has schema_version {version!r}; this deploylab reads version "
            f"{RESULTS_SCHEMA_VERSION}. Re-run the load test or use the deploylab that wrote it."
        )
    try:
        return Results.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"results file {path} does not match schema version 1: {exc}") from exc

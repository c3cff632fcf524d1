"""The resolved load of one run: the scenario's defaults with command-line overrides applied."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deploylab.errors import UsageError
from deploylab.loadtest.scenario import LoadDefaults

Mode = Literal["closed", "open", "trace"]


class LoadConfig(BaseModel):
    """How much load to offer and for how long. Exactly one of `concurrency` (closed loop) and
    `rate` (open loop) is set, or neither to replay a trace at its recorded times."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)
    arrival: Literal["poisson", "constant", "gamma"] = "poisson"
    gamma_shape: float = Field(default=1.0, gt=0)
    duration_s: float | None = Field(default=None, gt=0)
    requests: int | None = Field(default=None, ge=1)
    ramp_up_s: float = Field(default=0.0, ge=0)
    warmup_s: float = Field(default=0.0, ge=0)
    cooldown_s: float = Field(default=0.0, ge=0)
    workers: int = Field(default=1, ge=1)
    # Run the workers as Ray actors on this cluster ("local": a Ray instance started here).
    ray_address: str | None = None
    seed: int = Field(default=0, ge=0)
    timeout_s: float = Field(default=600.0, gt=0, description="per request")

    @model_validator(mode="after")
    def _consistent(self) -> LoadConfig:
        if self.concurrency is not None and self.rate is not None:
            raise ValueError("give either concurrency or rate, not both")
        duration = self.duration_s
        if duration is not None and self.warmup_s + self.cooldown_s >= duration:
            raise ValueError(
                f"warm-up ({self.warmup_s:g} s) plus cool-down ({self.cooldown_s:g} s) leave "
                f"nothing of the {duration:g} s run to measure: lower --warmup and --cooldown "
                f"(e.g. --warmup {duration / 10:g} --cooldown {duration / 10:g}) or raise "
                "--duration"
            )
        if duration is not None and self.ramp_up_s >= duration:
            raise ValueError(
                f"the ramp-up ({self.ramp_up_s:g} s) is as long as the whole {duration:g} s "
                f"run, so the load never reaches its target: lower --ramp-up (e.g. --ramp-up "
                f"{duration / 4:g}) or raise --duration"
            )
        return self

    @property
    def mode(self) -> Mode:
        """closed (fixed concurrency), open (arrival rate) or trace (recorded times)."""
        if self.concurrency is not None:
            return "closed"
        if self.rate is not None:
            return "open"
        return "trace"


def resolve_load(defaults: LoadDefaults, **overrides: Any) -> LoadConfig:
    """Apply overrides (None = not given) to a scenario's load defaults.

    Giving `rate` drops the scenario's `concurrency` and vice versa; likewise `duration_s` and
    `requests`. Giving both of a pair is a UsageError.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    for a, b, flag_a, flag_b in (
        ("rate", "concurrency", "--rate", "--concurrency"),
        ("duration_s", "requests", "--duration", "--requests"),
    ):
        if a in given and b in given:
            raise UsageError(f"Give {flag_a} or {flag_b}, not both.")
    merged = defaults.model_dump()
    if "rate" in given:
        merged["concurrency"] = None
    if "concurrency" in given:
        merged["rate"] = None
    if "duration_s" in given:
        merged["requests"] = None
    if "requests" in given:
        merged["duration_s"] = None
    merged.update(given)
    try:
        return LoadConfig.model_validate(merged)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'load'}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
        raise UsageError(f"Invalid load settings: {problems}.") from exc

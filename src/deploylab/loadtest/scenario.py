"""The scenario file schema (pydantic): what a business scenario sends, at what load, and the
SLOs it must meet. Built-in scenarios are YAML files in `loadtest/scenarios/`; users write their
own in the same schema (documented in docs/loadtest.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from deploylab.errors import UsageError
from deploylab.loadtest.distributions import Distribution, Fixed

SCENARIO_SCHEMA_VERSION = 1
_PERCENTILE_KEY = re.compile(r"^p(\d+(?:\.\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _percentile_shorthand(value: Any) -> Any:
    """`{p99: 500}` means: the 99th percentile must be at most 500 ms."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, limit),) = value.items()
        match = _PERCENTILE_KEY.match(str(key))
        if match:
            return {"percentile": float(match.group(1)), "max_ms": limit}
    return value


class _PercentileBound(_Strict):
    percentile: float = Field(gt=0, le=100)
    max_ms: float = Field(gt=0)

    @property
    def label(self) -> str:
        """`p99`-style name of the percentile."""
        return f"p{self.percentile:g}"


PercentileBound = Annotated[_PercentileBound, BeforeValidator(_percentile_shorthand)]


class SLO(_Strict):
    """Service-level objectives. TTFT and E2E are checked on response time (from the scheduled
    send); ITL and TPOT on the stream itself. A request meets the SLO when each of its own
    values is within every bound; the run meets it when each percentile is."""

    ttft_ms: PercentileBound | None = None
    itl_ms: PercentileBound | None = None
    tpot_ms: PercentileBound | None = None
    e2e_ms: PercentileBound | None = None
    error_rate: float | None = Field(default=None, ge=0, le=1, description="max failed share")

    def bounds(self) -> dict[str, _PercentileBound]:
        """The latency bounds that are set, by metric name."""
        found = {
            "ttft_ms": self.ttft_ms,
            "itl_ms": self.itl_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
        }
        return {name: bound for name, bound in found.items() if bound is not None}


class LoadDefaults(_Strict):
    """The scenario's default load; every field can be overridden on the command line."""

    concurrency: int | None = Field(default=None, ge=1, description="closed loop: in flight")
    rate: float | None = Field(default=None, gt=0, description="open loop: arrivals per s")
    arrival: Literal["poisson", "constant", "gamma"] = "poisson"
    gamma_shape: float = Field(default=1.0, gt=0, description="<1: burstier than Poisson")
    duration_s: float | None = Field(default=None, gt=0)
    requests: int | None = Field(default=None, ge=1)
    ramp_up_s: float = Field(default=0.0, ge=0)
    warmup_s: float = Field(default=0.0, ge=0)
    cooldown_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _one_mode(self) -> LoadDefaults:
        if self.concurrency is not None and self.rate is not None:
            raise ValueError("set either concurrency (closed loop) or rate (open loop), not both")
        return self


class RequestOptions(_Strict):
    """How each request is shaped on the wire."""

    api: Literal["chat", "completions"] = "chat"
    temperature: float = Field(default=0.0, ge=0)
    ignore_eos: bool = Field(default=True, description="ask for exactly max_tokens (vLLM)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into each body")


class SyntheticWorkload(_Strict):
    """Independent requests with input and output lengths drawn from distributions."""

    kind: Literal["synthetic"]
    input_tokens: Distribution
    output_tokens: Distribution
    system_prompt_tokens: int = Field(default=0, ge=0, description="a system prompt shared by all")


class DocumentSize(_Strict):
    tokens: int = Field(ge=1)
    weight: float = Field(gt=0)


class Corpus(_Strict):
    documents: int = Field(default=200, ge=1)
    sizes: list[DocumentSize] = Field(min_length=1)
    zipf_exponent: float = Field(default=1.0, ge=0, description="document popularity; 0 = uniform")


class RagWorkload(_Strict):
    """A shared system prompt, k documents retrieved from a corpus (Zipf popularity), a short
    question; short answers."""

    kind: Literal["rag"]
    system_prompt_tokens: int = Field(default=256, ge=0)
    documents_per_request: int = Field(default=3, ge=1)
    corpus: Corpus
    question_tokens: Distribution
    output_tokens: Distribution

    @model_validator(mode="after")
    def _enough_documents(self) -> RagWorkload:
        if self.documents_per_request > self.corpus.documents:
            raise ValueError(
                f"documents_per_request ({self.documents_per_request}) exceeds the corpus "
                f"size ({self.corpus.documents})"
            )
        return self


class SessionsWorkload(_Strict):
    """Multi-turn sessions: each turn resends the whole history after a think time."""

    kind: Literal["sessions"]
    system_prompt_tokens: int = Field(default=0, ge=0)
    turns: Distribution
    first_turn_tokens: Distribution
    turn_tokens: Distribution
    output_tokens: Distribution
    think_time_s: Distribution


class _ModelNames(_Strict):
    names: list[str] | None = Field(default=None, min_length=1, description="explicit names")
    count: int | None = Field(default=None, ge=1, description="or: this many from name_template")
    name_template: str = "model-{i}"

    @model_validator(mode="after")
    def _names_or_count(self) -> _ModelNames:
        if (self.names is None) == (self.count is None):
            raise ValueError("give either names (a list) or count (with name_template)")
        if self.count is not None and "{i}" not in self.name_template:
            raise ValueError("name_template must contain {i}")
        return self

    def resolved(self) -> list[str]:
        """The model names, in popularity order (most popular first)."""
        if self.names is not None:
            return list(self.names)
        assert self.count is not None
        return [self.name_template.replace("{i}", str(i)) for i in range(self.count)]


class MultiModelWorkload(_Strict):
    """Many models, each requested rarely: Zipf popularity, bursts to one model."""

    kind: Literal["multi-model"]
    models: _ModelNames
    zipf_exponent: float = Field(default=1.0, ge=0)
    burst_length: Distribution = Field(
        default_factory=lambda: Fixed(value=1), description="consecutive requests per model"
    )
    input_tokens: Distribution
    output_tokens: Distribution


class MultiLoraWorkload(_Strict):
    """One base model with many LoRA adapters, addressed by model name."""

    kind: Literal["multi-lora"]
    adapters: _ModelNames
    zipf_exponent: float = Field(default=1.0, ge=0)
    base_fraction: float = Field(default=0.0, ge=0, le=1, description="share sent to the base")
    input_tokens: Distribution
    output_tokens: Distribution


class ReplayWorkload(_Strict):
    """Replay a trace file (our JSONL, Azure CSV, BurstGPT CSV or Mooncake JSONL)."""

    kind: Literal["replay"]
    trace: str | None = Field(default=None, description="path, relative to the scenario file")
    format: Literal["auto", "deploylab", "azure", "burstgpt", "mooncake"] = "auto"
    time_scale: float = Field(default=1.0, gt=0, description="trace times are divided by this")
    block_size: int = Field(default=512, ge=1, description="tokens per Mooncake hash block")
    default_output_tokens: int = Field(default=128, ge=1, description="when the trace has none")
    max_input_tokens: int | None = Field(default=None, ge=1, description="clip longer prompts")
    max_output_tokens: int | None = Field(default=None, ge=1, description="clip longer outputs")


Workload = Annotated[
    SyntheticWorkload
    | RagWorkload
    | SessionsWorkload
    | MultiModelWorkload
    | MultiLoraWorkload
    | ReplayWorkload,
    Field(discriminator="kind"),
]


class Scenario(_Strict):
    """A business scenario: its workload, default load, and SLOs."""

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1)
    description: str
    bottleneck: str = Field(description="what this scenario exposes")
    request: RequestOptions = Field(default_factory=lambda: RequestOptions())
    load: LoadDefaults = Field(default_factory=lambda: LoadDefaults())
    slo: SLO = Field(default_factory=lambda: SLO())
    # other SLO sets by deployment class (e.g. cpu), chosen with --slo-profile; `slo` is the
    # default (the built-ins' is for a GPU deployment, also selectable as `gpu`)
    slo_profiles: dict[str, SLO] = Field(default_factory=dict)
    workload: Workload

    def with_slo_profile(self, profile: str | None) -> Scenario:
        """This scenario judged by SLO profile `profile` (None or `default`: `slo`; `gpu`,
        unless the file defines it, is the default too). UsageError for an unknown one."""
        if profile is None or profile == "default":
            return self
        if profile in self.slo_profiles:
            return self.model_copy(update={"slo": self.slo_profiles[profile]})
        if profile == "gpu":
            return self
        known = ", ".join(["default", "gpu", *sorted(self.slo_profiles)])
        raise UsageError(
            f"Scenario '{self.name}' has no SLO profile '{profile}'; it has: {known}. Add one "
            "under `slo_profiles:` in a copy of the scenario file."
        )

    def class_keys(self) -> list[str]:
        """The per-request classes results are broken down by."""
        return {
            "synthetic": [],
            "rag": ["doc_size"],
            "sessions": ["turn"],
            "multi-model": ["model", "model_first_request", "model_state"],
            "multi-lora": ["adapter"],
            "replay": ["model"],
        }[self.workload.kind]

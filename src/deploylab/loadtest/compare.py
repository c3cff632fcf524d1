"""Compare runs: summary deltas against a baseline, and the `--fail-if` regression gate.

The first run is the baseline; every other run is compared with it. A gate rule reads
`METRIC OP BOUND`, for example:

    ttft_ms.p99 > +10%      fail if p99 TTFT grew by more than 10 % over the baseline
    goodput_rps < -5%       fail if goodput fell by more than 5 %
    e2e_ms.p50 > +200       fail if p50 E2E grew by more than 200 (ms, the metric's unit)
    error_rate > 0.01       fail if the error rate is above 0.01 (no sign: the value itself)

OP is one of `>`, `>=`, `<`, `<=`. A signed bound (`+10%`, `-5`) is a change from the
baseline; an unsigned one is a plain threshold on each compared run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from deploylab.errors import UsageError
from deploylab.loadtest.results import Results

_LATENCIES = (
    "ttft_ms", "ttft_response_ms", "itl_ms", "tpot_ms", "e2e_ms", "e2e_response_ms",
    "schedule_lateness_ms",
)  # fmt: skip
_STATS = ("mean", "p50", "p90", "p95", "p99", "max")
_HIGHER_BETTER = (
    "output_tokens_per_s", "requests_per_s", "goodput_rps", "slo_attainment",
    "requests_completed", "capacity",
)  # fmt: skip
_LOWER_BETTER = ("error_rate", "requests_failed")


def metric_names() -> list[str]:
    """Every metric a comparison shows and a gate can test."""
    names = [f"{lat}.{st}" for lat in _LATENCIES for st in _STATS]
    return names + list(_HIGHER_BETTER) + list(_LOWER_BETTER)


def better(name: str) -> Literal["lower", "higher"]:
    """Which direction of change is an improvement."""
    return "higher" if name in _HIGHER_BETTER else "lower"


def metric_value(results: Results, name: str) -> float | None:
    """A metric of a run (None when the run did not measure it)."""
    s = results.summary
    if "." in name:
        latency, stat = name.split(".", 1)
        value = getattr(getattr(s, latency), stat)
    elif name == "capacity":
        value = results.capacity.capacity if results.capacity is not None else None
    else:
        value = getattr(s, name)
    return None if value is None else float(value)


def relative_change(base: float | None, value: float | None) -> float | None:
    """(value - base) / base; +-inf when the base is zero and the value is not."""
    if base is None or value is None:
        return None
    if base == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - base) / abs(base)


_RULE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<bound>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<pct>%)?\s*$"
)
_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
_EXAMPLE = 'e.g. --fail-if "ttft_ms.p99 > +10%" or --fail-if "error_rate > 0.01"'


@dataclass(frozen=True)
class GateRule:
    """One parsed `--fail-if` rule."""

    text: str
    metric: str
    op: str
    bound: float  # a fraction when `percent`
    relative: bool  # signed bound: a change from the baseline
    percent: bool

    def describe(self) -> str:
        if not self.relative:
            return f"{self.metric} {self.op} {self.bound:g}"
        unit = "%" if self.percent else ""
        shown = self.bound * 100 if self.percent else self.bound
        return f"change of {self.metric} {self.op} {shown:+g}{unit}"


def parse_rule(text: str) -> GateRule:
    """Parse `METRIC OP BOUND`; a UsageError says what is wrong and shows a valid rule."""
    match = _RULE.match(text)
    if match is None:
        raise UsageError(
            f"--fail-if '{text}' is not a rule of the form METRIC OP BOUND with OP one of "
            f">, >=, <, <= and BOUND a number, optionally signed and with % ({_EXAMPLE})."
        )
    metric = match["metric"]
    names = metric_names()
    if metric not in names:
        hint = ""
        if "." not in metric and metric in _LATENCIES:
            hint = f" Name a statistic too, e.g. {metric}.p99."
        raise UsageError(
            f"--fail-if '{text}': unknown metric '{metric}'.{hint} Known metrics: "
            f"{', '.join(names)}."
        )
    bound_text = match["bound"]
    relative = bound_text[0] in "+-"
    percent = match["pct"] is not None
    if percent and not relative:
        raise UsageError(
            f"--fail-if '{text}': a percentage is a change from the baseline, so give it a "
            f"sign: '+{bound_text}%' for growth, '-{bound_text}%' for a fall ({_EXAMPLE})."
        )
    bound = float(bound_text) / (100 if percent else 1)
    return GateRule(text.strip(), metric, match["op"], bound, relative, percent)


@dataclass(frozen=True)
class GateCheck:
    """One rule applied to one compared run."""

    rule: GateRule
    run: str
    value: float | None  # the change (fraction when percent) or the run's own value
    failed: bool
    detail: str


def _fmt(x: float, percent: bool) -> str:
    return f"{x * 100:+.1f}%" if percent else f"{x:+.4g}"


def apply_rule(rule: GateRule, base: Results, run: Results, label: str) -> GateCheck:
    """Evaluate a rule for one run; a metric either side did not measure fails the gate."""
    b, v = metric_value(base, rule.metric), metric_value(run, rule.metric)
    if v is None or (rule.relative and b is None):
        return GateCheck(rule, label, None, True, f"{rule.metric} was not measured")
    if not rule.relative:
        failed = _OPS[rule.op](v, rule.bound)
        return GateCheck(rule, label, v, failed, f"{rule.metric} = {v:.4g}")
    assert b is not None
    change = relative_change(b, v) if rule.percent else v - b
    assert change is not None
    failed = _OPS[rule.op](change, rule.bound)
    detail = f"{rule.metric}: {b:.4g} -> {v:.4g} ({_fmt(change, rule.percent)})"
    return GateCheck(rule, label, change, failed, detail)


def run_gate(
    rules: Sequence[GateRule], runs: Sequence[Results], labels: Sequence[str]
) -> list[GateCheck]:
    """Every rule against every run after the first (the baseline)."""
    return [
        apply_rule(rule, runs[0], run, label)
        for rule in rules
        for run, label in zip(runs[1:], labels[1:], strict=True)
    ]


@dataclass(frozen=True)
class Delta:
    """One metric across the runs: values, change from the baseline and its verdict."""

    metric: str
    better: Literal["lower", "higher"]
    values: list[float | None]
    changes: list[float | None]  # relative change from the baseline, per run (first: None)
    verdicts: list[Literal["better", "worse", "same", "n/a"]]


def deltas(
    runs: Sequence[Results], metrics: Sequence[str], same_within: float = 0.02
) -> list[Delta]:
    """Summary deltas against the first run; changes under `same_within` count as the same."""
    out = []
    for name in metrics:
        values = [metric_value(r, name) for r in runs]
        changes: list[float | None] = [None]
        verdicts: list[Literal["better", "worse", "same", "n/a"]] = ["n/a"]
        for v in values[1:]:
            change = relative_change(values[0], v)
            changes.append(change)
            if change is None:
                verdicts.append("n/a")
            elif abs(change) <= same_within:
                verdicts.append("same")
            else:
                up = change > 0
                verdicts.append("better" if up == (better(name) == "higher") else "worse")
        if all(v is None for v in values):
            continue
        out.append(Delta(name, better(name), values, changes, verdicts))
    return out


def comparability_warnings(runs: Sequence[Results], labels: Sequence[str]) -> list[str]:
    """Why a side-by-side comparison may mislead: runs of another scenario or target than the
    baseline, or interrupted runs (their numbers cover only part of the planned load)."""
    base, warnings = runs[0], []
    for run, label in zip(runs[1:], labels[1:], strict=True):
        if run.scenario.name != base.scenario.name:
            warnings.append(
                f"{label} ran scenario '{run.scenario.name}', the baseline {labels[0]} ran "
                f"'{base.scenario.name}': the workloads differ."
            )
        if run.target.url != base.target.url and not (
            run.target.started_locally and base.target.started_locally
        ):
            warnings.append(
                f"{label} measured {run.target.url}, the baseline {labels[0]} measured "
                f"{base.target.url}: the deltas are between targets, not versions of one."
            )
    for run, label in zip(runs, labels, strict=True):
        if run.interrupted:
            warnings.append(
                f"{label} was interrupted (Ctrl-C): its numbers cover only the "
                f"{run.summary.window_s[1] - run.summary.window_s[0]:.1f} s measured before."
            )
    return warnings

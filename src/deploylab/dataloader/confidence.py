"""How sure a verdict is: stage costs are differences of times per sample, each variant's
time known within its 95% confidence interval, so a stage's cost (and the gap to the next
stage) has a standard error from the variances added up (normal approximation)."""

from __future__ import annotations

from deploylab.dataloader.precision import combination_se, prob_positive
from deploylab.dataloader.report import Bottleneck, Measurement, StageCosts, StageShare, VariantName

SIGNIFICANT = 0.15  # share of the baseline's time per sample a stage must cost to count

# Each stage's cost as a combination of the variants' times per sample ("1" = baseline,
# "2" = no augmentation, "3" = synthetic read, "4" = synthetic decode).
Form = dict[str, float]


def _ms(m: Measurement | None) -> float | None:
    return None if m is None or m.samples_per_s <= 0 else 1000.0 / m.samples_per_s


def _clamp(share: float) -> float:
    return min(1.0, max(0.0, share))


def _se(runs: dict[VariantName, Measurement | None]) -> dict[str, float | None]:
    """Standard error of each variant's time per sample (ms), from its rate's interval."""
    keys = {
        "1": VariantName.BASELINE,
        "2": VariantName.NO_AUGMENTATION,
        "3": VariantName.SYNTHETIC_READ,
        "4": VariantName.SYNTHETIC_DECODE,
    }
    out: dict[str, float | None] = {}
    for key, name in keys.items():
        m = runs.get(name)
        t = _ms(m)
        out[key] = None if m is None or t is None or m.rate_ci is None else t * m.rate_ci / 1.96
    return out


def stage_confidence(
    kind: Bottleneck,
    stages: dict[Bottleneck, float],
    forms: dict[Bottleneck, Form],
    runs: dict[VariantName, Measurement | None],
    costs: StageCosts,
) -> float | None:
    """P(the named stage costs more than every other one and is significant)."""
    if kind not in forms:
        return None
    se = _se(runs)
    named = forms[kind]
    sig = {k: v for k, v in named.items()}
    sig["1"] = sig.get("1", 0.0) - SIGNIFICANT
    checks = [(stages[kind] - SIGNIFICANT * costs.baseline_ms, sig)]
    for other, form in forms.items():
        if other != kind:
            diff = {k: named.get(k, 0.0) - form.get(k, 0.0) for k in {*named, *form}}
            checks.append((stages[kind] - stages[other], diff))
    probs = [prob_positive(value, combination_se(form, se)) for value, form in checks]
    return None if any(p is None for p in probs) else min(p for p in probs if p is not None)


def ranked_shares(
    ranked: list[tuple[Bottleneck, float]],
    costs: StageCosts,
    forms: dict[Bottleneck, Form],
    runs: dict[VariantName, Measurement | None],
    first: Bottleneck,
) -> list[StageShare]:
    """The significant stages, the named one first, then by cost."""
    se = _se(runs)
    out = []
    for kind, ms in sorted(ranked, key=lambda kv: (kv[0] != first, -kv[1])):
        s = combination_se(forms.get(kind, {}), se) if kind in forms else None
        if kind == first or ms >= SIGNIFICANT * costs.baseline_ms:
            out.append(
                StageShare(
                    stage=kind,
                    ms=ms,
                    share=_clamp(ms / costs.baseline_ms),
                    ms_ci=None if s is None else 1.96 * s,
                )
            )
    return out


def not_dataloader_confidence(
    runs: dict[VariantName, Measurement | None], costs: StageCosts
) -> float | None:
    """P(the dataset's work is under the significance threshold of the baseline)."""
    value = (1 - SIGNIFICANT) * costs.baseline_ms - (costs.rest_ms or 0.0)
    return prob_positive(-value, combination_se({"3": 1, "1": -(1 - SIGNIFICANT)}, _se(runs)))


_KEYS = {
    "1": VariantName.BASELINE,
    "2": VariantName.NO_AUGMENTATION,
    "3": VariantName.SYNTHETIC_READ,
    "4": VariantName.SYNTHETIC_DECODE,
}


def cpu_stage_confidence(
    kind: Bottleneck,
    forms: dict[Bottleneck, Form],
    runs: dict[VariantName, Measurement | None],
    dominant: float,
) -> float | None:
    """P(the named stage takes the most CPU per sample and at least `dominant` of the
    baseline's), from the CPU-time intervals (used when the verdict is judged by CPU time)."""
    value: dict[str, float] = {}
    se: dict[str, float | None] = {}
    for key, name in _KEYS.items():
        m = runs.get(name)
        if m is not None:
            value[key] = m.cpu_ms_per_sample
            ci = m.cpu_ci
            se[key] = None if ci is None else m.cpu_ms_per_sample * ci / 1.96
    if kind not in forms or "1" not in value:
        return None

    def of(form: Form) -> float:
        return sum(c * value.get(k, 0.0) for k, c in form.items())

    named = forms[kind]
    sig = {**named, "1": named.get("1", 0.0) - dominant}
    checks = [(of(sig), sig)]
    for other, form in forms.items():
        if other != kind:
            diff = {k: named.get(k, 0.0) - form.get(k, 0.0) for k in {*named, *form}}
            checks.append((of(diff), diff))
    probs = [prob_positive(v, combination_se(f, se)) for v, f in checks]
    return None if any(p is None for p in probs) else min(p for p in probs if p is not None)

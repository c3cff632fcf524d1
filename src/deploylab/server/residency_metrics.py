"""Prometheus metrics of model residency, and one exposition for many models' registries."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deploylab.engine.sleep import SleepReport
from deploylab.server.metrics import ServerMetrics

STATES = ("resident", "sleeping", "unloaded", "waking")
WAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class ResidencyMetrics:
    """Per model: state (one-hot gauge), wakes by level, wake seconds, bytes moved."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        lbl = ["model_name"]
        self.state = Gauge(
            "deploylab:model_state", "1 for the model's current residency state.",
            [*lbl, "state"], registry=self.registry,
        )  # fmt: skip
        self.wakes = Counter(
            "deploylab:model_wakes", "Wakes from sleep, by the level slept at.",
            [*lbl, "level"], registry=self.registry,
        )  # fmt: skip
        self.sleeps = Counter(
            "deploylab:model_sleeps", "Times the model was put to sleep, by level.",
            [*lbl, "level"], registry=self.registry,
        )  # fmt: skip
        self.wake_seconds = Histogram(
            "deploylab:model_wake_seconds", "Seconds one wake took (weights, KV cache, graphs).",
            lbl, buckets=WAKE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.bytes_moved = Counter(
            "deploylab:model_bytes_moved",
            "Weight bytes copied: to_host on a level-1 sleep, to_device on a wake.",
            [*lbl, "direction"], registry=self.registry,
        )  # fmt: skip

    def set_state(self, model: str, state: str) -> None:
        """Mark `state` as the model's current one."""
        for s in STATES:
            self.state.labels(model, s).set(1.0 if s == state else 0.0)

    def observe(self, model: str, report: SleepReport) -> None:
        """Count one sleep or wake."""
        level = str(report.level)
        if report.action == "wake_up":
            self.wakes.labels(model, level).inc()
            self.wake_seconds.labels(model).observe(report.seconds)
            self.bytes_moved.labels(model, "to_device").inc(report.bytes_moved)
        else:
            self.sleeps.labels(model, level).inc()
            self.bytes_moved.labels(model, "to_host").inc(report.bytes_moved)


class _Merged:
    """A collector yielding the families of several registries, same-named ones joined."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self._registries = list(registries)

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        for registry in self._registries:
            for family in registry.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


class ModelSetMetrics(ServerMetrics):
    """The server's metrics for many models: each model's own (labelled by model_name) and
    the residency metrics, in one exposition. HTTP errors count under the default model."""

    def __init__(
        self, default: ServerMetrics, models: list[ServerMetrics], residency: ResidencyMetrics
    ) -> None:
        self.default = default
        self.models = models
        self.residency = residency
        self.model_name = default.model_name

    def observe_finished(
        self, ttft: float | None, itls: list[float], e2e: float, finish_reason: str, n_out: int
    ) -> None:
        """Not used: each model's handler records into its own metrics."""
        self.default.observe_finished(ttft, itls, e2e, finish_reason, n_out)

    def observe_error(self, status: int) -> None:
        """Count a rejected request."""
        self.default.observe_error(status)

    def render(self) -> bytes:
        """All models' metrics and the residency metrics."""
        regs = [m.registry for m in self.models] + [self.residency.registry]
        return generate_latest(_Merged(regs))  # type: ignore[arg-type]

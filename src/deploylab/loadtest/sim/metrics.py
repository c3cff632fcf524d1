"""Prometheus metrics under vLLM's names, kept as plain counters on the hot path.

Observations are plain list increments; `prometheus_client` only renders them at scrape time
through a custom collector, so a token costs no locks or label lookups.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

_LATENCY_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0,
              2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)  # fmt: skip
_ITL_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
          0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)  # fmt: skip
_TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
           200000)  # fmt: skip


class Hist:
    """A fixed-bucket histogram: counts per bucket, sum and count."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, ending with +Inf."""
        out, seen = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(seen)))
        return out


class ModelMetrics:
    """Everything measured for one served model name."""

    __slots__ = (
        "ttft", "itl", "tpot", "e2e", "queue", "prefill", "decode", "prompt_len", "gen_len",
        "prompt_tokens", "generation_tokens", "finished", "running", "waiting",
    )  # fmt: skip

    def __init__(self) -> None:
        self.ttft = Hist(_LATENCY_S)
        self.itl = Hist(_ITL_S)
        self.tpot = Hist(_ITL_S)
        self.e2e = Hist(_LATENCY_S)
        self.queue = Hist(_LATENCY_S)
        self.prefill = Hist(_LATENCY_S)
        self.decode = Hist(_LATENCY_S)
        self.prompt_len = Hist(_TOKENS)
        self.gen_len = Hist(_TOKENS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.running = 0
        self.waiting = 0


_HISTS = (  # (metric name, ModelMetrics attribute, help)
    ("vllm:time_to_first_token_seconds", "ttft", "Time to first token, from arrival."),
    ("vllm:inter_token_latency_seconds", "itl", "Gap between consecutive output tokens."),
    ("vllm:time_per_output_token_seconds", "itl", "Gap between output tokens (older name)."),
    ("vllm:request_time_per_output_token_seconds", "tpot", "Mean output token gap per request."),
    ("vllm:e2e_request_latency_seconds", "e2e", "Request latency from arrival to last token."),
    ("vllm:request_queue_time_seconds", "queue", "Time waiting for KV space or a model load."),
    ("vllm:request_prefill_time_seconds", "prefill", "Admission to first token."),
    ("vllm:request_decode_time_seconds", "decode", "First token to last token."),
    ("vllm:request_prompt_tokens", "prompt_len", "Prompt length per request."),
    ("vllm:request_generation_tokens", "gen_len", "Output length per request."),
)


class SimCollector:
    """Renders the simulator's state as vLLM-named Prometheus metric families."""

    def __init__(
        self,
        models: dict[str, ModelMetrics],
        kv_usage: Callable[[], float],
        prefix_counts: Callable[[], tuple[int, int]],
        extra: Callable[[], dict[str, dict[str, int]]],
    ) -> None:
        self._models = models
        self._kv_usage = kv_usage
        self._prefix_counts = prefix_counts
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name"]
        models = self._models
        for name, attr in (("running", "running"), ("waiting", "waiting")):
            gauge = GaugeMetricFamily(
                f"vllm:num_requests_{name}", f"Requests {name}.", labels=labels
            )
            for model, m in models.items():
                gauge.add_metric([model], getattr(m, attr))
            yield gauge
        usage = self._kv_usage()
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            gauge = GaugeMetricFamily(name, "KV cache usage (1 = full).", labels=[])
            gauge.add_metric([], usage)
            yield gauge
        queries, hits = self._prefix_counts()
        for name, value in (("queries", queries), ("hits", hits)):
            counter = CounterMetricFamily(
                f"vllm:prefix_cache_{name}", f"Prefix cache {name}, in tokens."
            )
            counter.add_metric([], value)
            yield counter
        for name, attr in (("prompt", "prompt_tokens"), ("generation", "generation_tokens")):
            counter = CounterMetricFamily(f"vllm:{name}_tokens", f"{name} tokens.", labels=labels)
            for model, m in models.items():
                counter.add_metric([model], getattr(m, attr))
            yield counter
        success = CounterMetricFamily(
            "vllm:request_success", "Finished requests.", labels=["model_name", "finished_reason"]
        )
        for model, m in models.items():
            for reason, count in m.finished.items():
                success.add_metric([model, reason], count)
        yield success
        for name, attr, doc in _HISTS:
            family = HistogramMetricFamily(name, doc, labels=labels)
            for model, m in models.items():
                hist: Hist = getattr(m, attr)
                family.add_metric([model], hist.buckets(), sum_value=hist.total)
            yield family
        for name, values in self._extra().items():
            label = "kind" if name == "faults" else "model"
            counter = CounterMetricFamily(
                f"deploylab_sim_{name}", f"Simulator {name}.", labels=[label]
            )
            for key, value in values.items():
                counter.add_metric([key], value)
            yield counter


def render(collector: SimCollector) -> bytes:
    """The Prometheus text exposition of the collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry)

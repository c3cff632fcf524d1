"""Prometheus metrics of the server, under vLLM's metric names so vLLM dashboards work."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from deploylab.engine.outputs import EngineStats
from deploylab.server.kv_tier_metrics import kv_tier_metrics

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class _EngineCollector(Collector):
    """Reads the engine's live state at scrape time (gauges and the engine's own counters)."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._stats = stats
        self._model = model_name

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        labels = ["model_name"]
        value = [self._model]

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(value, v)
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(value, v)
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to run.", s.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", s.kv_cache_usage)
        yield gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (old name).", s.kv_cache_usage)
        yield counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            s.prefix_cache_queries,
        )  # fmt: skip
        yield counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            s.prefix_cache_hits,
        )
        yield counter("vllm:prompt_tokens", "Prompt tokens processed.", s.prompt_tokens_total)
        yield counter(
            "vllm:generation_tokens", "Generation tokens produced.", s.generation_tokens_total
        )
        yield counter("vllm:num_preemptions", "Preempted requests.", s.num_preemptions_total)
        yield counter(
            "deploylab:recomputed_tokens",
            "Tokens computed again after a preemption (not served from the prefix cache).",
            s.num_recomputed_tokens_total,
        )
        yield counter(
            "deploylab:tree_attention_steps",
            "Decode steps whose rows shared KV blocks and ran tree attention.",
            s.num_tree_attention_steps_total,
        )
        if s.spec_num_drafts_total is not None:
            yield from _spec_metrics(s, labels, value)
        if s.lora_max:
            yield from _lora_metrics(s, labels, value)
        if s.kv_tiers:
            yield from kv_tier_metrics(s, labels, value)


def _lora_metrics(s: EngineStats, labels: list[str], value: list[str]) -> Iterator[Any]:
    """vLLM's `lora_requests_info` (adapters of running and waiting requests; the value is the
    scrape time, as vLLM's) and the adapter slot loads and evictions (only with LoRA on)."""
    info = GaugeMetricFamily(
        "vllm:lora_requests_info",
        "Running and waiting LoRA adapters.",
        labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
    )
    info.add_metric(
        [str(s.lora_max), ",".join(s.lora_running), ",".join(s.lora_waiting)], time.time()
    )
    yield info
    for name, doc, v in (
        ("lora_loads", "LoRA adapters copied into a device slot.", s.lora_loads_total),
        (
            "lora_evictions",
            "LoRA adapters evicted from a device slot (LRU).",
            s.lora_evictions_total,
        ),
    ):
        c = CounterMetricFamily(f"deploylab:{name}", doc, labels=labels)
        c.add_metric(value, v)
        yield c


def _spec_metrics(s: EngineStats, labels: list[str], value: list[str]) -> Iterator[Any]:
    """vLLM's speculative-decoding counters (only when the engine speculates)."""
    for name, doc, v in (
        ("num_drafts", "Sequence-steps that verified draft tokens.", s.spec_num_drafts_total),
        ("num_draft_tokens", "Draft tokens proposed and verified.", s.spec_num_draft_tokens_total),
        ("num_accepted_tokens", "Draft tokens accepted.", s.spec_num_accepted_tokens_total),
    ):
        c = CounterMetricFamily(f"vllm:spec_decode_{name}", doc, labels=labels)
        c.add_metric(value, float(v or 0))
        yield c
    per_pos = CounterMetricFamily(
        "vllm:spec_decode_num_accepted_tokens_per_pos",
        "Draft tokens accepted, by position in the draft.",
        labels=[*labels, "position"],
    )
    for i, v in enumerate(s.spec_accepted_per_position):
        per_pos.add_metric([*value, str(i)], float(v))
    yield per_pos


class ServerMetrics:
    """The metric registry of one server: engine state plus per-request latency histograms."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(stats, model_name))
        self.model_name = model_name
        lbl = ["model_name"]
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", lbl,
            buckets=TTFT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between output tokens.", lbl,
            buckets=ITL_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds", "Mean time per output token of a request.",
            lbl, buckets=ITL_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", lbl,
            buckets=E2E_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.success = Counter(
            "vllm:request_success", "Finished requests by reason.",
            ["model_name", "finished_reason"], registry=self.registry,
        )  # fmt: skip
        self.http_errors = Counter(
            "deploylab:request_errors", "Rejected requests by HTTP status.",
            ["model_name", "status"], registry=self.registry,
        )  # fmt: skip

    def observe_finished(
        self, ttft: float | None, itls: list[float], e2e: float, finish_reason: str, n_out: int
    ) -> None:
        """Record one finished request's latencies."""
        m = self.model_name
        if ttft is not None:
            self.ttft.labels(m).observe(ttft)
        for gap in itls:
            self.itl.labels(m).observe(gap)
        if n_out > 1 and ttft is not None:
            self.tpot.labels(m).observe((e2e - ttft) / (n_out - 1))
        self.e2e.labels(m).observe(e2e)
        self.success.labels(m, finish_reason).inc()

    def observe_error(self, status: int) -> None:
        """Count a request rejected with an HTTP error status."""
        self.http_errors.labels(self.model_name, str(status)).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

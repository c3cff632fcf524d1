"""Prometheus text parsing and the catalog of server metrics the load tester understands.

Serving engines name the same quantities differently: vLLM (and `deploylab serve` and
`deploylab sim`, which use vLLM's names) say `vllm:num_requests_running`, SGLang says
`sglang:num_running_reqs` (`sglang_num_running_reqs` from v0.5.4 on). The catalog maps each
quantity to the names that carry it; the first name a target offers wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SeriesSpec:
    """One quantity the report knows, and the metric names that carry it."""

    key: str
    title: str
    unit: str
    kind: Literal["gauge", "counter"]
    combine: Literal["sum", "mean"]  # over label sets (models, ranks)
    names: tuple[str, ...]


def _sglang(name: str) -> tuple[str, str]:
    return (f"sglang:{name}", f"sglang_{name}")


CATALOG: tuple[SeriesSpec, ...] = (
    SeriesSpec(
        "requests_running", "Running requests", "requests", "gauge", "sum",
        ("vllm:num_requests_running", *_sglang("num_running_reqs")),
    ),
    SeriesSpec(
        "requests_waiting", "Waiting requests", "requests", "gauge", "sum",
        ("vllm:num_requests_waiting", *_sglang("num_queue_reqs")),
    ),
    SeriesSpec(
        "kv_cache_usage", "KV-cache usage", "fraction", "gauge", "mean",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", *_sglang("token_usage")),
    ),
    SeriesSpec(
        "prefix_cache_hit_rate_gauge", "Prefix-cache hit rate (server's gauge)", "fraction",
        "gauge", "mean", ("vllm:gpu_prefix_cache_hit_rate", *_sglang("cache_hit_rate")),
    ),
    SeriesSpec(
        "prefix_cache_queries_total", "Prefix-cache queries", "tokens", "counter", "sum",
        ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    ),
    SeriesSpec(
        "prefix_cache_hits_total", "Prefix-cache hits", "tokens", "counter", "sum",
        ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    ),
    SeriesSpec(
        "prompt_tokens_total", "Prompt tokens", "tokens", "counter", "sum",
        ("vllm:prompt_tokens", *_sglang("prompt_tokens")),
    ),
    SeriesSpec(
        "generation_tokens_total", "Generation tokens", "tokens", "counter", "sum",
        ("vllm:generation_tokens", *_sglang("generation_tokens")),
    ),
    SeriesSpec(
        "cached_tokens_total", "Prompt tokens served from the prefix cache", "tokens", "counter",
        "sum", _sglang("cached_tokens"),
    ),
    SeriesSpec(
        "preemptions_total", "Preemptions", "requests", "counter", "sum",
        ("vllm:num_preemptions",),
    ),
    SeriesSpec(
        "external_prefix_cache_queries_total", "KV-tier (external) cache queries", "tokens",
        "counter", "sum", ("vllm:external_prefix_cache_queries",),
    ),
    SeriesSpec(
        "external_prefix_cache_hits_total", "KV-tier (external) cache hits", "tokens",
        "counter", "sum", ("vllm:external_prefix_cache_hits",),
    ),
    SeriesSpec(
        "kv_host_load_bytes_total", "Bytes copied back from the host tier", "bytes", "counter",
        "sum", ("deploylab:kv_offload_host_load_bytes",),
    ),
    SeriesSpec(
        "kv_disk_load_bytes_total", "Bytes copied back from the disk tier", "bytes", "counter",
        "sum", ("deploylab:kv_offload_disk_load_bytes",),
    ),
    SeriesSpec(
        "kv_host_store_bytes_total", "Bytes written to the host tier", "bytes", "counter",
        "sum", ("deploylab:kv_offload_host_store_bytes",),
    ),
    SeriesSpec(
        "kv_disk_store_bytes_total", "Bytes written to the disk tier", "bytes", "counter",
        "sum", ("deploylab:kv_offload_disk_store_bytes",),
    ),
)  # fmt: skip

SPECS = {spec.key: spec for spec in CATALOG}


def parse_samples(text: str) -> dict[str, list[float]]:
    """Sample values by sample name (one value per label set) from Prometheus text format.

    Tolerant on purpose: a line it cannot read is skipped, so one odd exporter line does not
    cost the whole scrape.
    """
    samples: dict[str, list[float]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            end = _label_end(line, brace)
            if end < 0:
                continue
            rest = line[end + 1 :].split()
        else:
            name, *rest = line.split()
        if not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        samples.setdefault(name, []).append(value)
    return samples


def _label_end(line: str, start: int) -> int:
    """Index of the `}` closing the label set that opens at `start` (-1 if none)."""
    quoted = escaped = False
    for i in range(start + 1, len(line)):
        ch = line[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "}" and not quoted:
            return i
    return -1


def _candidates(spec: SeriesSpec, name: str) -> tuple[str, ...]:
    if spec.kind == "counter":
        return (f"{name}_total", name)
    return (name,)


def extract(samples: dict[str, list[float]]) -> dict[str, tuple[str, float]]:
    """The catalog's quantities found in one scrape: key -> (metric name used, value)."""
    found: dict[str, tuple[str, float]] = {}
    for spec in CATALOG:
        for name in spec.names:
            hit = next((c for c in _candidates(spec, name) if c in samples), None)
            if hit is None:
                continue
            values = [v for v in samples[hit] if not math.isnan(v)]
            if not values:
                continue
            total = sum(values)
            found[spec.key] = (hit, total if spec.combine == "sum" else total / len(values))
            break
    return found

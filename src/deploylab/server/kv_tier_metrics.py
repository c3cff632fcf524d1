"""Prometheus metrics of the engine's KV tiers (only when `kv_offload_gib` is set): vLLM's
names where vLLM has them (KV connector hits, offload bytes by transfer type, host usage),
`deploylab:` names for the rest (per-tier hits, bytes, disk usage, errors)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from deploylab.engine.outputs import EngineStats

# vLLM's transfer types; "GPU" is the engine's device (the CPU itself on a CPU run).
_TRANSFERS = (
    ("host", "stored_bytes", "GPU_to_CPU"),
    ("host", "loaded_bytes", "CPU_to_GPU"),
    ("disk", "stored_bytes", "CPU_to_DISK"),
    ("disk", "loaded_bytes", "DISK_to_GPU"),
)


def kv_tier_metrics(s: EngineStats, labels: list[str], value: list[str]) -> Iterator[Any]:
    """The KV-tier metric families for one engine snapshot."""
    tiers = {t.tier: t for t in s.kv_tiers}

    def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=labels)
        c.add_metric(value, float(v))
        return c

    yield counter(
        "vllm:external_prefix_cache_queries",
        "Prompt tokens looked up in the KV tiers (after a device prefix-cache miss).",
        s.external_prefix_cache_queries,
    )
    yield counter(
        "vllm:external_prefix_cache_hits",
        "Prompt tokens copied back from the KV tiers instead of recomputed.",
        s.external_prefix_cache_hits,
    )
    moved = CounterMetricFamily(
        "vllm:kv_offload_total_bytes", "Bytes moved by the KV tiers, by transfer type.",
        labels=[*labels, "transfer_type"],
    )  # fmt: skip
    for tier, field, kind in _TRANSFERS:
        if tier in tiers:
            moved.add_metric([*value, kind], float(getattr(tiers[tier], field)))
    yield moved
    host = tiers["host"]
    usage = GaugeMetricFamily(
        "vllm:kv_offload_cpu_cache_usage_perc", "Host-tier usage (1 = full).", labels=labels
    )
    usage.add_metric(value, host.used_bytes / host.capacity_bytes if host.capacity_bytes else 0)
    yield usage
    for tier, t in tiers.items():
        yield counter(
            f"deploylab:kv_offload_{tier}_hits", f"Prompt tokens copied back from the {tier} "
            "tier.", t.hit_tokens,
        )  # fmt: skip
        yield counter(
            f"deploylab:kv_offload_{tier}_load_bytes", f"Bytes copied back from the {tier} tier.",
            t.loaded_bytes,
        )  # fmt: skip
        yield counter(
            f"deploylab:kv_offload_{tier}_store_bytes", f"Bytes written to the {tier} tier.",
            t.stored_bytes,
        )  # fmt: skip
        g = GaugeMetricFamily(
            f"deploylab:kv_offload_{tier}_usage_bytes", f"Bytes held by the {tier} tier.",
            labels=labels,
        )  # fmt: skip
        g.add_metric(value, float(t.used_bytes))
        yield g
    if "disk" in tiers:
        yield counter(
            "deploylab:kv_offload_disk_errors",
            "Disk-tier files that could not be read or written (the blocks were recomputed).",
            tiers["disk"].errors,
        )

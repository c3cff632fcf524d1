"""Scrape the target's Prometheus `/metrics` during a run and keep a time series of what it
offers (running and waiting requests, KV-cache usage, prefix-cache hit rate, token counters).

A background thread GETs `/metrics` every `interval_s` seconds. The first scrape happens before
the load starts: a target without `/metrics` (404, not Prometheus text, nothing we know) is
noted once and not asked again; the run goes on. Each sample is stamped with the midpoint of
its request on `perf_counter_ns` (the clock the load's start instant is taken on), so the
series lines up with the requests' times.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deploylab.errors import TargetUnreachableError
from deploylab.loadtest.prom import SPECS, extract, parse_samples
from deploylab.loadtest.target import http_get

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
METRICS_PATH = "/metrics"


class MetricSeries(BaseModel):
    """One quantity over time. `t_s` is seconds since the load's start (negative: before it);
    `values[i]` is null where that scrape lacked the quantity."""

    model_config = ConfigDict(extra="forbid")

    title: str
    unit: str
    kind: Literal["gauge", "counter", "derived"]
    sources: list[str]  # the target's metric names it came from
    t_s: list[float]
    values: list[float | None]


class ServerMetrics(BaseModel):
    """The results' `server_metrics` section."""

    model_config = ConfigDict(extra="forbid")

    url: str
    interval_s: float
    available: bool  # False: the target offers no usable /metrics (see `note`)
    note: str | None = None
    scrapes: int = 0  # successful scrapes
    failed_scrapes: int = 0
    flavor: str | None = None  # vllm (also deploylab serve and sim), sglang, or mixed
    series: dict[str, MetricSeries] = Field(default_factory=dict)


class Scraper:
    """Scrapes one target's `/metrics` on a background thread: `start()`, run the load,
    `stop()`, then `result(start_ns)`."""

    def __init__(self, base_url: str, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("the scrape interval must be positive")
        self.url = base_url.rstrip("/") + METRICS_PATH
        self.interval_s = interval_s
        self.timeout_s = max(2.0, 2 * interval_s)
        self.note: str | None = None
        self.available = False
        self._samples: list[tuple[int, dict[str, tuple[str, float]]]] = []
        self._failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _scrape(self) -> dict[str, tuple[str, float]] | str:
        """One scrape: the quantities found, or a string saying why there are none."""
        t0 = time.perf_counter_ns()
        try:
            status, body = http_get(self.url, self.timeout_s)
        except TargetUnreachableError as exc:
            return f"GET {self.url} failed: {exc.__cause__ or exc}"
        if status != 200:
            return f"GET {self.url} answered HTTP {status}"
        found = extract(parse_samples(body.decode("utf-8", "replace")))
        if not found:
            return f"{self.url} offers no metric deploylab knows (vLLM or SGLang names)"
        self._samples.append(((t0 + time.perf_counter_ns()) // 2, found))
        return found

    def start(self) -> None:
        """Probe once; if the target offers metrics, keep scraping in the background."""
        first = self._scrape()
        if isinstance(first, str):
            self.note = f"no server metrics: {first}; the report leaves them out."
            log.info(self.note)
            return
        self.available = True
        self._thread = threading.Thread(target=self._loop, name="deploylab-scrape", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        due = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            outcome = self._scrape()
            if isinstance(outcome, str):
                self._failed += 1
                if self._failed == 1:
                    log.warning("scraping server metrics: %s (going on)", outcome)
            # after a slow scrape, skip the missed slots instead of bursting to catch up
            due = max(due + self.interval_s, time.monotonic())

    def stop(self) -> None:
        """Stop the thread and take one last scrape, so counters cover the whole run."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)
        self._thread = None
        if isinstance(self._scrape(), str):
            self._failed += 1

    def result(self, start_ns: int) -> ServerMetrics:
        """The series, with times in seconds since `start_ns` (perf_counter_ns)."""
        metrics = ServerMetrics(
            url=self.url,
            interval_s=self.interval_s,
            available=self.available,
            note=self.note,
            scrapes=len(self._samples),
            failed_scrapes=self._failed,
        )
        if not self.available:
            return metrics
        times = [round((ns - start_ns) / 1e9, 4) for ns, _ in self._samples]
        sources: set[str] = set()
        for key, spec in SPECS.items():
            values = [found.get(key) for _, found in self._samples]
            if all(v is None for v in values):
                continue
            names = sorted({v[0] for v in values if v is not None})
            sources.update(names)
            metrics.series[key] = MetricSeries(
                title=spec.title,
                unit=spec.unit,
                kind=spec.kind,
                sources=names,
                t_s=times,
                values=[None if v is None else v[1] for v in values],
            )
        metrics.series.update(derived_series(metrics.series))
        flavors = {name.split(":")[0].split("_")[0] for name in sources}
        metrics.flavor = flavors.pop() if len(flavors) == 1 else "mixed"
        return metrics


def _rate(series: MetricSeries, title: str) -> MetricSeries:
    """Per-second increase of a counter between consecutive scrapes (at the later time)."""
    t, v = series.t_s, series.values
    out_t: list[float] = []
    out_v: list[float | None] = []
    for i in range(1, len(t)):
        a, b, dt = v[i - 1], v[i], t[i] - t[i - 1]
        out_t.append(t[i])
        # a counter that went down was reset (server restart): no rate for that interval
        ok = a is not None and b is not None and dt > 0 and b >= a
        out_v.append((b - a) / dt if ok else None)  # type: ignore[operator]
    return MetricSeries(
        title=title, unit=f"{series.unit}/s", kind="derived", sources=series.sources,
        t_s=out_t, values=out_v,
    )  # fmt: skip


def _hit_rate(queries: MetricSeries, hits: MetricSeries) -> MetricSeries:
    """Hits over queries per scrape interval (null where nothing was looked up)."""
    out_v: list[float | None] = []
    for i in range(1, len(queries.t_s)):
        q0, q1 = queries.values[i - 1], queries.values[i]
        h0, h1 = hits.values[i - 1], hits.values[i]
        if None in (q0, q1, h0, h1) or q1 <= q0:  # type: ignore[operator]
            out_v.append(None)
        else:
            out_v.append((h1 - h0) / (q1 - q0))  # type: ignore[operator]
    return MetricSeries(
        title="Prefix-cache hit rate", unit="fraction", kind="derived",
        sources=queries.sources + hits.sources, t_s=queries.t_s[1:], values=out_v,
    )  # fmt: skip


def derived_series(series: dict[str, MetricSeries]) -> dict[str, MetricSeries]:
    """Token throughput from the token counters, KV-tier bytes/s, and the prefix-cache and
    KV-tier hit rates per interval (from query and hit counters, else the server's gauge)."""
    out: dict[str, MetricSeries] = {}
    for counter, key, title in (
        ("prompt_tokens_total", "prompt_tokens_per_s", "Prompt tokens/s (server)"),
        ("generation_tokens_total", "generation_tokens_per_s", "Generation tokens/s (server)"),
        ("kv_host_load_bytes_total", "kv_host_load_bytes_per_s", "Host tier -> device"),
        ("kv_disk_load_bytes_total", "kv_disk_load_bytes_per_s", "Disk tier -> device"),
        ("kv_host_store_bytes_total", "kv_host_store_bytes_per_s", "Device -> host tier"),
        ("kv_disk_store_bytes_total", "kv_disk_store_bytes_per_s", "Host -> disk tier"),
    ):
        if counter in series and len(series[counter].t_s) > 1:
            out[key] = _rate(series[counter], title)
    ext_q = series.get("external_prefix_cache_queries_total")
    ext_h = series.get("external_prefix_cache_hits_total")
    if ext_q is not None and ext_h is not None and len(ext_q.t_s) > 1:
        out["external_prefix_cache_hit_rate"] = _hit_rate(ext_q, ext_h).model_copy(
            update={"title": "KV-tier hit rate (after a device miss)"}
        )
    queries, hits = series.get("prefix_cache_queries_total"), series.get("prefix_cache_hits_total")
    if queries is not None and hits is not None and len(queries.t_s) > 1:
        out["prefix_cache_hit_rate"] = _hit_rate(queries, hits)
    elif "prefix_cache_hit_rate_gauge" in series:
        gauge = series["prefix_cache_hit_rate_gauge"]
        out["prefix_cache_hit_rate"] = gauge.model_copy(
            update={"title": "Prefix-cache hit rate", "kind": "derived"}
        )
    return out

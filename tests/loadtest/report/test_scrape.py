"""Scraping the target's /metrics: parsing, vLLM and SGLang names, a series that matches what
a changing stub served, and targets without usable metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reporthelpers import run, scenario

from deploylab.loadtest.prom import extract, parse_samples
from deploylab.loadtest.scrape import Scraper

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a",note="x } y \\" z"} 3.0
vllm:num_requests_running{model_name="b"} 4
vllm:kv_cache_usage_perc{engine="0"} 0.25
vllm:kv_cache_usage_perc{engine="1"} 0.75
vllm:prompt_tokens_total{model_name="a"} 1e3
vllm:prompt_tokens_created{model_name="a"} 1.7e9
vllm:num_requests_waiting NaN
this line is not prometheus
"""


def test_parse_samples_sums_label_sets_and_survives_odd_lines() -> None:
    samples = parse_samples(VLLM_TEXT)
    assert samples["vllm:num_requests_running"] == [3.0, 4.0]
    found = extract(samples)
    assert found["requests_running"] == ("vllm:num_requests_running", 7.0)  # summed
    assert found["kv_cache_usage"] == ("vllm:kv_cache_usage_perc", 0.5)  # averaged
    assert found["prompt_tokens_total"] == ("vllm:prompt_tokens_total", 1000.0)
    assert "requests_waiting" not in found  # only NaN


@pytest.mark.parametrize("prefix", ["sglang:", "sglang_"])
def test_sglang_names_map_to_the_same_quantities(prefix: str) -> None:
    text = (
        f'{prefix}num_running_reqs{{model_name="m"}} 5\n{prefix}num_queue_reqs 2\n'
        f"{prefix}token_usage 0.4\n{prefix}cache_hit_rate 0.6\n"
        f"{prefix}generation_tokens_total 99\n"
    )
    found = extract(parse_samples(text))
    assert {k: v[1] for k, v in found.items()} == {
        "requests_running": 5.0,
        "requests_waiting": 2.0,
        "kv_cache_usage": 0.4,
        "prefix_cache_hit_rate_gauge": 0.6,
        "generation_tokens_total": 99.0,
    }


def test_run_series_match_what_the_changing_stub_served(law: Any, tmp_path: Path) -> None:
    law.configure(base_ms=30)
    loaded = scenario(tmp_path, "scrape")
    results = run(law.url, loaded, 0.2, rate=20, duration_s=2.0)
    served = law.log()
    metrics = results.server_metrics
    assert metrics is not None and metrics.available and metrics.flavor == "vllm"
    # probe, at least one in the run, the last after it; never more often than the interval
    # (missed slots are skipped, not caught up): at most 2.0 / 0.2 + the probe and the last
    assert metrics.failed_scrapes == 0 and 3 <= metrics.scrapes == len(served) <= 12
    series = metrics.series
    for key, field in (
        ("kv_cache_usage", "kv"),
        ("requests_waiting", "waiting"),
        ("requests_running", "running"),
        ("generation_tokens_total", "generation"),
        ("prefix_cache_queries_total", "queries"),
    ):
        assert series[key].values == [s["values"][field] for s in served], key
    assert series["prefix_cache_hit_rate"].values == pytest.approx([0.3] * (len(served) - 1))
    # the stub counts every token it streamed; the last scrape follows the run's end
    assert series["generation_tokens_total"].values[-1] == 2 * results.summary.requests_completed
    # same clock: the samples are stamped in the order the stub served them, each one after
    # the previous sample was served (a stamp is the middle of its own request)
    t = np.array(series["kv_cache_usage"].t_s)
    served_s = np.array([s["ns"] for s in served]) / 1e9
    assert np.all(np.diff(t) > 0) and np.all(np.diff(served_s) > 0)
    offset = float(np.median(served_s - t))  # the run's start on the stub's clock
    assert np.all(t[1:] + offset > served_s[:-1]) and np.all(t[:-1] + offset < served_s[1:])
    assert t[0] <= 0.0 < t[1]  # probed before the start
    assert t[-1] >= 2.0  # and once more after the end


def test_sglang_target_is_scraped_under_its_names(law: Any) -> None:
    law.configure(metrics="sglang")
    scraper = Scraper(law.url, 0.1)
    start = time.perf_counter_ns()
    scraper.start()
    time.sleep(0.45)
    scraper.stop()
    metrics = scraper.result(start)
    served = law.log()
    assert metrics.flavor == "sglang" and metrics.scrapes == len(served) >= 4
    assert metrics.series["requests_waiting"].sources == ["sglang:num_queue_reqs"]
    assert metrics.series["kv_cache_usage"].values == [s["values"]["kv"] for s in served]
    assert set(metrics.series["prefix_cache_hit_rate"].values) == {0.3}
    assert "generation_tokens_per_s" in metrics.series


@pytest.mark.parametrize(
    ("mode", "said"), [("off", "HTTP 404"), ("junk", "offers no metric deploylab knows")]
)
def test_target_without_usable_metrics_is_noted_once_and_not_asked_again(
    law: Any, mode: str, said: str
) -> None:
    law.configure(metrics=mode)
    scraper = Scraper(law.url, 0.05)
    scraper.start()
    time.sleep(0.2)
    scraper.stop()
    metrics = scraper.result(time.perf_counter_ns())
    assert not metrics.available and metrics.series == {}
    assert metrics.note is not None and said in metrics.note
    assert len(law.log()) == 1  # asked once (the probe), never again

"""Load generation on Ray (a local cluster) against the simulated target: the same requests
and schedule as one process, and a worker killed mid-run is recorded, not hidden."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from simhelpers import run_sim

from deploylab.loadtest import ray_workers
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.library import load_scenario_file
from deploylab.loadtest.results import Results
from deploylab.loadtest.runner import run_load

ray = pytest.importorskip("ray")

SCENARIO = """
schema_version: 1
name: ray-open
description: Tiny fixed-size requests at a constant rate.
bottleneck: none; checks distributed load generation.
request: {api: completions}
slo: {error_rate: 1.0}
workload:
  kind: synthetic
  input_tokens: 16
  output_tokens: 4
"""
SIM = "ttft: {base_ms: 5}\nitl: {base_ms: 2}\n"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray_workers.connect("local", 2)
    yield
    ray.shutdown()


def _run(tmp_path: Path, url: str, **load: Any) -> Results:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    config = LoadConfig(arrival="constant", seed=7, **load)
    return run_load(load_scenario_file(path), url, config)


def test_two_ray_workers_match_one_process(tmp_path: Path, local_ray: None) -> None:
    with run_sim(SIM) as sim:
        one = _run(tmp_path, sim.url, rate=20, requests=30)
        two = _run(tmp_path, sim.url, rate=20, requests=30, workers=2, ray_address="local")
    assert len(two.requests) == len(one.requests) == 30
    # the same requests at the same scheduled offsets from the common origin
    plan = sorted((r.id, r.scheduled_s) for r in one.requests)
    got = sorted((r.id, r.scheduled_s) for r in two.requests)
    assert [i for i, _ in got] == [i for i, _ in plan]
    assert [s for _, s in got] == pytest.approx([s for _, s in plan], abs=1e-6)
    # each request left no earlier than scheduled, and within its own recorded lateness
    for r in two.requests:
        assert r.sent_s == pytest.approx(r.scheduled_s + r.lateness_ms / 1000, abs=1e-5)
        assert r.lateness_ms >= 0
    s1, s2 = one.summary, two.summary
    assert s2.requests_completed == s1.requests_completed == 30 and s2.requests_failed == 0
    assert s2.output_tokens_total == s1.output_tokens_total
    assert s2.input_tokens_mean == s1.input_tokens_mean
    assert {r.worker for r in two.requests} == {0, 1}
    assert set(s2.lateness_by_worker_ms) == {"0", "1"}
    assert sum(v.count for v in s2.lateness_by_worker_ms.values()) == 30
    assert two.config.load.ray_address == "local"


def test_a_killed_worker_is_recorded_and_the_run_finishes(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill_second(actors: list[Any]) -> None:
        def later() -> None:
            time.sleep(1.5)
            ray.kill(actors[1])

        threading.Thread(target=later, daemon=True).start()

    monkeypatch.setattr(
        ray_workers, "run_ray", functools.partial(ray_workers.run_ray, on_start=kill_second)
    )
    with run_sim(SIM) as sim:
        res = _run(tmp_path, sim.url, rate=10, requests=40, workers=2, ray_address="local")
    assert len(res.requests) == 40  # every scheduled request is accounted for
    lost = [r for r in res.requests if r.error_kind == ray_workers.LOST]
    assert lost and all(r.worker == 1 for r in lost)
    assert all(r.ok for r in res.requests if r.worker == 0)
    assert res.summary.errors_by_kind.get(ray_workers.LOST) == len(lost)
    assert any("worker 1" in note and "died" in note for note in res.notes)


def test_without_ray_the_flag_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from deploylab.errors import UsageError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'deploylab\[ray\]'"):
        ray_workers.require_ray()


def test_more_workers_than_cluster_cpus_is_refused(tmp_path: Path, local_ray: None) -> None:
    from deploylab.errors import UsageError

    with (
        run_sim(SIM) as sim,
        pytest.raises(UsageError, match="--workers 3 needs a CPU per worker"),
    ):
        _run(tmp_path, sim.url, rate=10, requests=6, workers=3, ray_address="local")

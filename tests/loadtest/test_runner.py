"""The runner against a real HTTP server on loopback (the stub): timings, load shapes, errors,
model checks, sessions, and the results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploylab.errors import ConfigError, TargetUnreachableError, UsageError
from deploylab.loadtest.config import resolve_load
from deploylab.loadtest.library import LoadedScenario, load_scenario
from deploylab.loadtest.local_server import free_port
from deploylab.loadtest.results import RESULTS_SCHEMA_VERSION, load_results
from deploylab.loadtest.runner import execute, prepare_run, run_load

SESSIONS = """\
name: three-turns
description: short sessions of three turns
bottleneck: history resend
slo: {ttft_ms: {p99: 5000}}
workload:
  kind: sessions
  system_prompt_tokens: 5
  turns: 3
  first_turn_tokens: 20
  turn_tokens: 4
  output_tokens: 3
  think_time_s: 0.05
"""


def scenario_file(tmp_path: Path, text: str) -> LoadedScenario:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return load_scenario(str(path))


def run(stub: Any, name: str | LoadedScenario = "chat-short", **kw: Any):  # noqa: ANN201
    loaded = load_scenario(name) if isinstance(name, str) else name
    prepare = {k: kw.pop(k) for k in ("model", "model_map", "tokenizer", "api") if k in kw}
    kw.setdefault("warmup_s", 0.0)
    kw.setdefault("cooldown_s", 0.0)
    load = resolve_load(loaded.scenario.load, **kw)
    return run_load(loaded, stub.url, load, **prepare)


def test_measured_ttft_matches_a_known_server_delay(stub: Any) -> None:
    stub.configure(ttft_ms=150, itl_ms=20, tokens=6)
    res = run(stub, concurrency=1, requests=8)
    ttft = np.array([r.ttft_ms for r in res.requests])
    assert len(ttft) == 8 and all(r.ok for r in res.requests)
    # the law, never a stopwatch: the stub writes token i at 150 + 20 i ms after reading the
    # request, so no chunk can be seen earlier (how much later depends on the machine)
    for r in res.requests:
        assert all(t >= 150 + 20 * i - 1 for i, t in enumerate(r.chunk_times_ms))
        assert r.ttft_ms == r.chunk_times_ms[0] and r.e2e_ms >= r.chunk_times_ms[-1]
        assert r.tpot_ms == pytest.approx((r.e2e_ms - r.ttft_ms) / 5, abs=1e-3)
        assert len(r.itl_ms) == 5 and sum(r.itl_ms) == pytest.approx(
            r.chunk_times_ms[-1] - r.chunk_times_ms[0], abs=1e-3
        )
    assert ttft.min() >= 149.0  # the stub waits 150 ms after reading the request
    assert all(r.output_tokens == 6 and r.output_tokens_source == "usage" for r in res.requests)
    # closed loop: the next request is scheduled when the slot frees, so its lateness is the
    # client's own bookkeeping, small beside the server's 250 ms (a generous proportion)
    s = res.summary
    assert s.schedule_lateness_ms.p50 is not None and s.e2e_ms.p50 is not None
    assert 0 <= s.schedule_lateness_ms.p50 < s.e2e_ms.p50 / 10


def test_closed_loop_never_exceeds_its_concurrency(stub: Any) -> None:
    stub.configure(ttft_ms=40, itl_ms=5, tokens=4)
    res = run(stub, concurrency=4, requests=40, workers=2)
    assert stub.stats()["max_in_flight"] == 4
    events = sorted(
        [(r.sent_s, 1) for r in res.requests]
        + [(r.sent_s + r.e2e_ms / 1000, -1) for r in res.requests],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak <= 4
    assert res.summary.requests_completed == 40
    assert {r.worker for r in res.requests} == {0, 1}


def test_open_loop_sends_on_its_precomputed_schedule(stub: Any) -> None:
    stub.configure(ttft_ms=5, tokens=2)
    res = run(stub, rate=40.0, arrival="constant", duration_s=1.5)
    scheduled = np.array(sorted(r.scheduled_s for r in res.requests))
    assert len(scheduled) == 60 == stub.stats()["requests"]
    assert np.allclose(np.diff(scheduled), 0.025, atol=1e-6)
    lateness = np.array([r.lateness_ms for r in res.requests])
    assert np.all(lateness >= 0)
    assert res.summary.schedule_lateness_ms.count == 60
    # throughput is what completed inside the window over its length (not a stopwatch figure)
    lo, hi = res.summary.window_s
    done = sum(r.ok and lo <= r.sent_s + r.e2e_ms / 1000 <= hi for r in res.requests)
    assert res.summary.requests_per_s == pytest.approx(done / (hi - lo))
    assert 0 < done <= 60


def test_target_errors_are_counted_by_kind_and_the_run_goes_on(stub: Any, tmp_path: Path) -> None:
    stub.configure(ttft_ms=5, tokens=3, fail_every=4, fail_status=503, drop_every=5)
    res = run(stub, concurrency=2, requests=40)
    kinds = res.summary.errors_by_kind
    assert kinds["http_503"] == 10 and kinds["disconnected"] >= 6
    assert res.summary.requests_completed + res.summary.requests_failed == 40
    assert res.summary.error_rate == pytest.approx(sum(kinds.values()) / 40)
    failed = [r for r in res.requests if r.error_kind == "http_503"]
    assert failed[0].status == 503 and "planted failure" in (failed[0].error_detail or "")
    path = res.save(tmp_path)
    assert load_results(path).summary.errors_by_kind == kinds


def test_warmup_and_cooldown_are_excluded(stub: Any) -> None:
    stub.configure(ttft_ms=2, tokens=2)
    res = run(stub, rate=20.0, arrival="constant", duration_s=2.0, warmup_s=0.5, cooldown_s=0.5)
    assert res.summary.window_s == (0.5, 1.5)
    inside = [r for r in res.requests if r.in_window]
    assert all(0.5 <= r.scheduled_s <= 1.5 for r in inside)
    assert len(inside) == 21 and res.summary.requests_excluded == 40 - 21
    assert res.summary.requests_completed == 21


def test_missing_models_fail_fast_and_model_map_fixes_it(stub: Any) -> None:
    with pytest.raises(UsageError) as info:
        run(stub, "multi-model-rare", rate=5.0, requests=3)
    message = str(info.value)
    assert "does not serve: model-0, model-1" in message and "stub-model" in message
    assert stub.stats()["requests"] == 0  # nothing was sent
    res = run(stub, "multi-model-rare", rate=50.0, requests=6, model_map=["model-*=stub-model"])
    assert {b["model"] for b in stub.stats()["bodies"]} == {"stub-model"}
    assert set(res.summary.classes) == {"model", "model_first_request", "model_state"}
    assert res.summary.classes["model_state"] == {}  # the stub sends no x-deploylab-model-state
    firsts = [r for r in res.requests if r.classes["model_first_request"] == "yes"]
    assert len(firsts) == len({r.classes["model"] for r in res.requests})


def test_choosing_among_several_served_models(stub: Any) -> None:
    stub.configure(models=["a", "b"], tokens=2)
    with pytest.raises(UsageError, match=r"serves 2 models \(a, b\); choose one with --model"):
        run(stub, concurrency=1, requests=1)
    with pytest.raises(UsageError, match="does not serve: c"):
        run(stub, concurrency=1, requests=1, model="c")
    run(stub, concurrency=1, requests=2, model="b")
    assert [b["model"] for b in stub.stats()["bodies"]] == ["b", "b"]


def test_target_without_models_route_needs_model(stub: Any) -> None:
    stub.configure(models_route=False, tokens=2)
    with pytest.raises(UsageError, match="no /v1/models route"):
        run(stub, concurrency=1, requests=1)
    res = run(stub, concurrency=1, requests=1, model="anything")
    assert res.target.models_served is None and res.requests[0].ok


def test_sessions_resend_the_growing_history(stub: Any, tmp_path: Path) -> None:
    # Answers take 20 ms: with instant ones, the slot that ends its session first may start a
    # third session and spend the last of the budget before the other session's last turn.
    stub.configure(tokens=3, ttft_ms=20)
    loaded = scenario_file(tmp_path, SESSIONS)
    res = run(stub, loaded, concurrency=2, requests=6)
    bodies = stub.stats()["bodies"]
    by_length = sorted(len(b["messages"]) for b in bodies)
    assert by_length == [2, 2, 4, 4, 6, 6]  # system + 1, 3, 5 turns of history
    longest = next(b for b in bodies if len(b["messages"]) == 6)
    assert [m["role"] for m in longest["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert longest["messages"][2]["content"] == " tok0 tok1 tok2"
    turns = res.summary.classes["turn"]
    assert list(turns) == ["1", "2", "3"] and turns["3"].requests_completed == 2
    by_session: dict[str | None, list[Any]] = {}
    for r in res.requests:
        by_session.setdefault(r.session, []).append(r)
    gaps = []
    for recs in by_session.values():
        recs.sort(key=lambda r: r.turn)
        gaps += [
            b.scheduled_s - (a.sent_s + a.e2e_ms / 1000)
            for a, b in zip(recs, recs[1:], strict=False)
        ]
    assert len(gaps) == 4 and all(g == pytest.approx(0.05, abs=0.002) for g in gaps)  # think time


def test_completions_api_and_chunk_counting(stub: Any) -> None:
    stub.configure(tokens=5, usage=False)
    res = run(stub, concurrency=1, requests=2, api="completions")
    assert all("prompt" in b for b in stub.stats()["bodies"])
    assert all(r.output_tokens == 5 and r.output_tokens_source == "chunks" for r in res.requests)
    assert res.config.api == "completions"


def test_tokenizer_counts_output_without_usage(stub: Any, smol_tokenizer: Any) -> None:
    from deploylab.loadtest import runner

    stub.configure(tokens=4, usage=False)
    loaded = load_scenario("chat-short")
    prepared = prepare_run(loaded, stub.url)
    prepared.tokenizer = smol_tokenizer  # as `--tokenizer smollm2-135m-instruct` would set
    load = resolve_load(loaded.scenario.load, concurrency=1, requests=2)
    res = runner.execute(prepared, load)
    expected = len(smol_tokenizer(" tok0 tok1 tok2 tok3", add_special_tokens=False)["input_ids"])
    assert all(r.output_tokens == expected for r in res.requests)
    assert all(r.output_tokens_source == "tokenizer" for r in res.requests)


def test_prepared_run_is_reusable_for_a_sweep(stub: Any) -> None:
    stub.configure(tokens=2)
    loaded = load_scenario("chat-short")
    prepared = prepare_run(loaded, stub.url + "/v1/")
    assert prepared.base_url == stub.url
    counts = []
    for concurrency in (1, 2):
        load = resolve_load(loaded.scenario.load, concurrency=concurrency, requests=4)
        counts.append(execute(prepared, load).summary.requests_completed)
    assert counts == [4, 4]


def test_unreachable_target() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TargetUnreachableError, match=f"Cannot reach the target at {url}"):
        prepare_run(load_scenario("chat-short"), url)
    with pytest.raises(UsageError, match="not an http"):
        prepare_run(load_scenario("chat-short"), "localhost:8000")


def test_results_file_has_the_documented_fields(stub: Any, tmp_path: Path) -> None:
    stub.configure(tokens=3)
    res = run(stub, "rag", rate=30.0, requests=6)
    data = json.loads(res.save(tmp_path).read_text())
    assert data["schema_version"] == RESULTS_SCHEMA_VERSION == 1
    for key in ("scenario", "target", "config", "summary", "requests"):
        assert key in data
    assert data["server_metrics"] is None and data["capacity"] is None
    summary = data["summary"]
    for key in ("requests_completed", "requests_failed", "output_tokens_per_s"):
        assert key in summary
    assert "requests_per_s" in summary and "goodput_rps" in summary
    for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(summary[metric]) >= {"mean", "p50", "p90", "p95", "p99", "max"}
    assert set(summary["classes"]) == {"doc_size"}
    record = data["requests"][0]
    for key in ("scheduled_s", "sent_s", "ttft_ms", "chunk_times_ms", "itl_ms", "error_kind"):
        assert key in record
    assert data["scenario"]["definition"]["workload"]["kind"] == "rag"
    data["schema_version"] = 99
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="schema_version 99"):
        load_results(tmp_path / "old.json")


async def test_execute_works_from_inside_a_running_event_loop(stub: Any) -> None:
    stub.configure(tokens=2)
    res = run(stub, concurrency=1, requests=2)  # a sync call made while a loop runs here
    assert res.summary.requests_completed == 2


def test_the_scenario_as_run_shows_the_load_that_ran(stub: Any, tmp_path: Path) -> None:
    """chat-short's file says rate 10; a closed-loop run at concurrency 2 must say so."""
    from deploylab.loadtest.report import write_report

    stub.configure(ttft_ms=5, itl_ms=1, tokens=2)
    res = run(stub, concurrency=2, requests=4)
    ran = res.scenario.definition["load"]
    assert ran["concurrency"] == 2 and ran["rate"] is None and ran["requests"] == 4
    assert ran["duration_s"] is None
    html = write_report(res, tmp_path / "report.html").read_text()
    assert "&quot;concurrency&quot;: 2" in html or '"concurrency": 2' in html


LONG_THINK = SESSIONS.replace("think_time_s: 0.05", "think_time_s: 30")


def test_sessions_do_not_sleep_through_think_times_past_the_duration(
    stub: Any, tmp_path: Path
) -> None:
    """Turns due after --duration are never sent, so nothing waits for their think time."""
    from datetime import timedelta

    from deploylab.loadtest.findings import overrun_note

    stub.configure(ttft_ms=1, tokens=2)
    res = run(stub, scenario_file(tmp_path, LONG_THINK), concurrency=2, duration_s=1.0)
    took = (res.finished_at - res.started_at).total_seconds()
    assert {r.turn for r in res.requests} == {1}
    assert took < 20  # the law: a 30 s think time was not waited for (it was before)
    assert overrun_note(res) is None
    slow = res.model_copy(update={"finished_at": res.started_at + timedelta(seconds=40)})
    note = overrun_note(slow)
    assert note is not None and "took 40 s for a 1 s --duration" in note

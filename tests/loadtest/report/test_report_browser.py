"""report.html and compare.html opened from disk in real headless Chromium: no console errors,
nothing fetched, every plot present and drawn, the SLO verdict visible. Screenshots go to
test-artifacts/loadtest-report/."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from reporthelpers import Runs, open_checked, plot_facts

from deploylab.cli import main

RUN_PLOTS = {"cdf-ttft_ms", "cdf-itl_ms", "cdf-tpot_ms", "cdf-e2e_ms", "over-time",
             "tokens-over-time"}  # fmt: skip
SERVER_PLOTS = {"server-0", "server-1", "server-2", "server-3"}  # 4 panels from the stub


def _assert_drawn(facts: dict[str, dict[str, float]], expected: set[str]) -> None:
    assert expected <= set(facts), f"missing plots: {expected - set(facts)}"
    for name, fact in facts.items():
        assert fact["width"] > 300 and fact["height"] > 150, (name, fact)
        assert fact["paths"] >= 1, f"plot {name} draws no data line: {fact}"
        assert fact["texts"] >= 4, f"plot {name} has no axis labels: {fact}"


def _drawn_above(page: Any, below: str, above: str) -> bool:
    """Both marker sets are drawn, visible, and `above` is painted after (over) `below`."""
    for sel in (below, above):
        box = page.locator(sel).bounding_box()
        if box is None or box["width"] <= 0 or box["height"] <= 0:
            return False
    following = page.evaluate(
        "([a, b]) => document.querySelector(a).compareDocumentPosition("
        "document.querySelector(b)) & Node.DOCUMENT_POSITION_FOLLOWING",
        [below, above],
    )
    return bool(following)


def test_run_report_opens_offline_with_every_plot_and_the_verdict(
    runs: Runs, browser_context: Any, artifacts: Path
) -> None:
    assert runs.outputs["base"].returncode == 0, runs.outputs["base"].stderr
    html = runs.base / "report.html"
    text = html.read_text()
    # self-contained: no script, no stylesheet or image fetched from anywhere
    assert not re.search(r"<(script|link|img|iframe)\b", text)
    page = open_checked(browser_context, html, artifacts / "report.png")
    try:
        verdict = page.locator("#slo-verdict")
        assert verdict.is_visible()
        assert verdict.inner_text().startswith("SLO met")
        facts = plot_facts(page)
        _assert_drawn(facts, RUN_PLOTS | SERVER_PLOTS)
        assert page.locator("#server-metrics").is_visible()
        # the server's side (the why) comes right after the verdict, before the client charts
        headings = page.locator("h2").all_inner_texts()
        assert headings[0] == "Server metrics", headings
        assert _drawn_above(page, "#ttft_ms-p99", "#ttft_ms-p50")
        assert page.locator("#errors-none").is_visible()
        assert page.locator("#configuration").is_visible()
        config = page.locator("#configuration ~ div").first.inner_text()
        assert "rate" in config and runs.base.name not in config
    finally:
        page.close()


def test_report_of_a_failing_run_shows_the_miss_classes_and_errors(
    runs: Runs, browser_context: Any, artifacts: Path
) -> None:
    page = open_checked(browser_context, runs.regressed / "report.html", artifacts / "missed.png")
    try:
        verdict = page.locator("#slo-verdict")
        assert verdict.is_visible() and verdict.inner_text().startswith("SLO missed")
        assert page.locator("table.classes").count() == 1  # turn 1, 2, 3
        turns = page.locator("table.classes tbody tr td:first-child").all_inner_texts()
        assert turns == ["1", "2", "3"]
        errors = page.locator("table.errors").inner_text()
        assert "http_500" in errors and "planted failure" in errors
        why = page.locator("#slo-why")  # one sentence per failed bound, and what to try
        assert why.is_visible()
        assert "ttft p99" in why.inner_text() and "deploylab loadtest sweep" in why.inner_text()
        assert _drawn_above(page, "#e2e_ms-p99", "#e2e_ms-p50")
        _assert_drawn(plot_facts(page), RUN_PLOTS)
    finally:
        page.close()


def test_target_without_metrics_gives_a_report_without_that_section(
    runs: Runs, browser_context: Any, artifacts: Path
) -> None:
    done = runs.outputs["nometrics"]
    assert done.returncode == 0, done.stderr
    said = (done.stdout + done.stderr).count("no server metrics")
    assert said == 1, done.stdout + done.stderr  # said once, and the run went on
    saved = json.loads((runs.nometrics / "results.json").read_text())
    assert saved["server_metrics"]["available"] is False
    assert "HTTP 404" in saved["server_metrics"]["note"]
    assert saved["summary"]["requests_completed"] > 20
    page = open_checked(
        browser_context, runs.nometrics / "report.html", artifacts / "nometrics.png"
    )
    try:
        assert page.locator("#server-metrics").count() == 0
        facts = plot_facts(page)
        _assert_drawn(facts, RUN_PLOTS)
        assert not any(name.startswith("server-") for name in facts)
        assert "HTTP 404" in page.locator("#configuration ~ div").first.inner_text()
    finally:
        page.close()


def test_compare_page_overlays_runs_and_shows_the_gate(
    runs: Runs, browser_context: Any, artifacts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "compare.html"
    code = main(
        ["report", "compare", str(runs.base / "results.json"), str(runs.regressed),
         str(runs.same), "--out", str(out), "--fail-if", "ttft_ms.p50 > +100%"]
    )  # fmt: skip
    assert code == 1  # regressed broke the rule
    page = open_checked(browser_context, out, artifacts / "compare.png")
    try:
        facts = plot_facts(page)
        expected = {f"compare-cdf-{m}" for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")}
        _assert_drawn(facts, expected)
        gate = page.locator("#gate-verdict")
        assert gate.is_visible() and gate.get_attribute("data-verdict") == "failed"
        assert page.locator("#slo-verdict").is_visible()
        runs_table = page.locator("table.runs").inner_text()
        assert "base" in runs_table and "regressed" in runs_table and "same" in runs_table
        deltas = page.locator("table.deltas").inner_text()
        assert "ttft_ms.p99" in deltas and "goodput_rps" in deltas
        # the regressed run's TTFT p50 cell is marked worse (red)
        row = page.locator("table.deltas tr", has_text="ttft_ms.p50").first
        assert row.locator("td.worse").count() >= 1
        # three curves (one per run) in the TTFT CDF
        curves = page.evaluate(
            "() => [...document.querySelectorAll('#plot-compare-cdf-ttft_ms svg path')]"
            ".filter(p => (p.getAttribute('d') || '').split('L').length > 5).length"
        )
        assert curves >= 3
    finally:
        page.close()

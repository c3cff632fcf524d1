"""Helpers shared by the report tests: scenario files, runs against the law stub, and opening
a page in the real browser and checking what it shows."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from deploylab.loadtest.config import resolve_load
from deploylab.loadtest.library import LoadedScenario, load_scenario
from deploylab.loadtest.results import Results
from deploylab.loadtest.runner import execute, prepare_run

T = TypeVar("T")

SCENARIO = """\
name: law-{name}
description: tiny requests against the law stub
bottleneck: whatever the law says
load: {{{load}}}
slo:
{slo}
workload:
  kind: synthetic
  input_tokens: {{dist: fixed, value: 8}}
  output_tokens: {{dist: fixed, value: 2}}
"""


class Runs:
    """Saved runs against the law stub: folders holding results.json (and report.html)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # SLOs generous enough for a busy test machine, except where a run is meant to miss
        self.base = root / "base"  # CLI run, 30 ms TTFT, server metrics
        self.same = root / "same"  # Python API run, same law as base
        self.regressed = root / "regressed"  # 500 ms TTFT, sessions, 1 in 10 failing
        self.nometrics = root / "nometrics"  # CLI run, target without /metrics
        self.outputs: dict[str, subprocess.CompletedProcess[str]] = {}


def scenario(
    tmp_path: Path, name: str, slo: str = "  ttft_ms: {p99: 500}", load: str = "rate: 20"
) -> LoadedScenario:
    """A synthetic scenario file with the given SLO block and default load."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(SCENARIO.format(name=name, slo=slo, load=load))
    return load_scenario(str(path))


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Call fn on a fresh thread: Playwright's sync API (the session's browser) leaves an event
    loop marked running on the main thread, and `execute` refuses to run under one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def run(url: str, loaded: LoadedScenario, scrape_s: float | None = None, **load: Any) -> Results:
    """One run through the Python API (what the CLI calls)."""
    prepared = prepare_run(loaded, url)
    config = resolve_load(loaded.scenario.load, **load)
    return in_thread(lambda: execute(prepared, config, scrape_interval_s=scrape_s))


def open_checked(context: Any, html: Path, screenshot: Path) -> Any:
    """Open a report from disk in the browser; fail on any console error or warning, page
    error, or request leaving the file. Returns the page (caller closes it)."""
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    target = html.resolve().as_uri()
    page.on(
        "request",
        lambda r: problems.append(f"fetched {r.url}") if r.url != target else None,
    )
    page.goto(target)
    page.wait_for_load_state("load")
    page.screenshot(path=str(screenshot), full_page=True)
    assert not problems, problems
    return page


def plot_facts(page: Any) -> dict[str, dict[str, float]]:
    """For every plot element: its rendered size, how many data lines (open paths of two or
    more segments; axis, grid and tick lines have one, frames and markers are closed) and how
    many texts it has."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('figure.plot')].map(f => {
            const svg = f.querySelector('svg');
            const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
            const paths = svg ? [...svg.querySelectorAll('path')]
                .filter(p => { const d = p.getAttribute('d') || '';
                    return !/z/i.test(d) && d.split('L').length > 2; }).length : 0;
            const texts = svg ? svg.querySelectorAll('text').length : 0;
            return [f.dataset.plot, {width: box.width, height: box.height, paths, texts}];
        }))"""
    )

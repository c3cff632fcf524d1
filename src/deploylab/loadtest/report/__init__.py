"""HTML reports of load-test results: `report.html` for one run, `compare.html` for several.
Each is one self-contained file (inline SVG charts and style; nothing fetched)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deploylab.loadtest.compare import GateCheck
from deploylab.loadtest.results import Results

REPORT_FILE = "report.html"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(results: Results, path: Path) -> Path:
    """Render one run's report to `path` (a folder gets `report.html` inside)."""
    from deploylab.loadtest.report.run_page import render_run

    if path.is_dir():
        path = path / REPORT_FILE
    return _write(path, render_run(results))


def write_compare(
    runs: Sequence[Results],
    labels: Sequence[str],
    paths: Sequence[str],
    out: Path,
    checks: Sequence[GateCheck] = (),
) -> Path:
    """Render the comparison page of `runs` (the first is the baseline) to `out`."""
    from deploylab.loadtest.report.compare_page import render_compare

    return _write(out, render_compare(runs, labels, paths, checks))

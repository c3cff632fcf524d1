"""Fixtures for the report, scrape, sweep and compare tests: the law stub server on loopback,
runs against it, and a real headless Chromium (Debian's, installed by `make test`)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:  # --import-mode=importlib: make reporthelpers importable
    sys.path.insert(0, str(HERE))

REPO = HERE.parents[2]
ARTIFACTS = REPO / "test-artifacts" / "loadtest-report"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class LawServer:
    """Handle on the law stub subprocess."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def configure(self, **settings: Any) -> None:
        self._post("/control", settings)

    def reset(self) -> None:
        self._post("/reset", {})

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/log", timeout=10) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="session")
def law_process() -> Iterator[LawServer]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "lawstub.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"law stub did not start: {line}{proc.stdout.read()}")
    try:
        yield LawServer(int(line.split()[1]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def law(law_process: LawServer) -> LawServer:
    """The law stub, reset to its defaults."""
    law_process.reset()
    return law_process


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium, headless, with a fresh profile; never a downloaded browser."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver)."
        )
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


SESSIONS_SCENARIO = """\
name: law-sessions
description: three-turn sessions against the law stub
bottleneck: whatever the law says
load: {rate: 6, duration_s: 2.5}
slo:
  ttft_ms: {p99: 100}
  error_rate: 0.05
workload:
  kind: sessions
  turns: 3
  first_turn_tokens: 20
  turn_tokens: 4
  output_tokens: 2
  think_time_s: 0.05
"""


def cli_run(
    law_url: str, scenario: Path, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`deploylab loadtest` as a user runs it."""
    command = [
        sys.executable, "-m", "deploylab", "loadtest", "--scenario", str(scenario),
        "--url", law_url, "--duration", "2.5", "--warmup", "0.3", "--cooldown", "0.3",
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def runs(law_process: LawServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from reporthelpers import Runs, run, scenario

    from deploylab.loadtest.report import write_report

    root = tmp_path_factory.mktemp("runs")
    saved = Runs(root)
    simple = scenario(root, "simple", slo="  ttft_ms: {p99: 1000}")
    law_process.reset()
    law_process.configure(base_ms=30)
    saved.outputs["base"] = cli_run(
        law_process.url,
        Path(simple.source),
        saved.base,
        "--rate",
        "20",
        "--scrape-interval",
        "0.25",
    )
    results = run(law_process.url, simple, 0.25, rate=20, duration_s=2.5, warmup_s=0.3)
    results.save(saved.same)
    write_report(results, saved.same)

    law_process.configure(base_ms=500, fail_every=10)
    (root / "sessions.yaml").write_text(SESSIONS_SCENARIO)
    from deploylab.loadtest.library import load_scenario

    results = run(law_process.url, load_scenario(str(root / "sessions.yaml")), 0.25)
    results.save(saved.regressed)
    write_report(results, saved.regressed)

    law_process.reset()
    law_process.configure(base_ms=30, metrics="off")
    saved.outputs["nometrics"] = cli_run(
        law_process.url, Path(simple.source), saved.nometrics, "--rate", "20"
    )
    law_process.reset()
    return saved

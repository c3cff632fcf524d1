"""`deploylab report compare` and `render`: the --fail-if gate (exit 1 on a planted regression,
0 otherwise), clear errors for bad rules and foreign schema versions, deltas' directions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reporthelpers import Runs

from deploylab.cli import main
from deploylab.errors import UsageError
from deploylab.loadtest.compare import better, deltas, parse_rule
from deploylab.loadtest.results import load_results


def _compare(runs: list[Path], tmp_path: Path, *rules: str) -> int:
    argv = ["report", "compare", *map(str, runs), "--out", str(tmp_path / "c.html")]
    for rule in rules:
        argv += ["--fail-if", rule]
    return main(argv)


def test_gate_fails_on_the_planted_regression(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # regressed: TTFT 30 -> 500 ms and one request in ten fails
    rules = ("ttft_ms.p99 > +10%", "error_rate > 0.05", "goodput_rps < -20%")
    assert _compare([runs.base, runs.regressed], tmp_path, *rules) == 1
    captured = capsys.readouterr()
    assert captured.out.count("FAIL") == 3  # each rule caught it
    assert "regression: 3 of 3 gate checks failed" in captured.err
    assert (tmp_path / "c.html").exists()  # the page is written either way


def test_gate_passes_without_a_regression(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = ("ttft_ms.p50 > +100%", "error_rate > 0.05", "e2e_ms.p50 >= +100")
    assert _compare([runs.base, runs.same], tmp_path, *rules) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 3 and "FAIL" not in out


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        ("ttft_ms.p99 >> 10%", "is not a rule of the form METRIC OP BOUND"),
        ("ttft_ms.p99 > ten", "is not a rule of the form"),
        ("ttft.p99 > +10%", "unknown metric 'ttft.p99'"),
        ("ttft_ms > +10%", "Name a statistic too, e.g. ttft_ms.p99"),
        ("ttft_ms.p99 > 10%", "give it a sign: '+10%'"),
        ("", "is not a rule"),
    ],
)
def test_bad_rules_are_usage_errors_that_say_why(
    rule: str, said: str, runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match=None) as caught:
        parse_rule(rule)
    assert said in str(caught.value)
    assert _compare([runs.base, runs.same], tmp_path, rule) == 2
    assert said in capsys.readouterr().err.replace("\n", " ").replace("  ", " ")


def test_rules_parse_to_relative_or_absolute_bounds() -> None:
    rule = parse_rule(" ttft_ms.p99 > +10% ")
    assert (rule.metric, rule.op, rule.bound, rule.relative, rule.percent) == (
        "ttft_ms.p99",
        ">",
        pytest.approx(0.10),
        True,
        True,
    )
    assert parse_rule("goodput_rps < -5%").bound == pytest.approx(-0.05)
    assert parse_rule("e2e_ms.p50 >= +200").relative and not parse_rule("e2e_ms.p50>=200").relative
    assert parse_rule("error_rate > 1e-2").bound == pytest.approx(0.01)


def test_deltas_know_which_direction_is_better(runs: Runs) -> None:
    base, regressed = (
        load_results(runs.base / "results.json"),
        load_results(runs.regressed / "results.json"),
    )
    found = {d.metric: d for d in deltas([base, regressed], ["ttft_ms.p50", "goodput_rps"])}
    assert better("ttft_ms.p50") == "lower" and better("goodput_rps") == "higher"
    assert found["ttft_ms.p50"].verdicts[1] == "worse"  # went up
    assert found["goodput_rps"].verdicts[1] == "worse"  # went down
    change = found["ttft_ms.p50"].changes[1]
    assert change is not None and change > 5  # about 500 / 30 - 1


def test_compare_needs_two_runs(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compare([runs.base], tmp_path) == 2
    assert "at least two results files" in capsys.readouterr().err


def test_render_rebuilds_the_report_from_saved_results(runs: Runs, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "results.json").write_text((runs.base / "results.json").read_text())
    assert main(["report", "render", str(copy)]) == 0  # a folder: report.html beside it
    again, first = (copy / "report.html").read_text(), (runs.base / "report.html").read_text()
    ids = [f'data-plot="{p}"' for p in ("cdf-ttft_ms", "over-time", "server-0")]
    assert all(i in again and i in first for i in ids)


@pytest.mark.parametrize("version", [0, 2, "one", None])
def test_other_schema_versions_fail_naming_the_version(
    version: object, runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((runs.base / "results.json").read_text())
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    assert main(["report", "render", str(path)]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"schema_version {version!r}" in err and "reads version 1" in err
    assert not (tmp_path / "report.html").exists()


def test_a_results_file_that_is_not_json_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.json"
    path.write_text("{ not json")
    assert main(["report", "render", str(path)]) == 2
    assert "is not readable JSON" in capsys.readouterr().err


def test_compare_warns_when_runs_are_not_like_for_like(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _compare([runs.base, runs.same], tmp_path) == 0
    assert "warning" not in capsys.readouterr().out  # same scenario, same target, complete
    cut = load_results(runs.same / "results.json").model_copy(update={"interrupted": True})
    cut.save(tmp_path / "cut")
    assert _compare([runs.base, runs.regressed, tmp_path / "cut"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "ran scenario 'law-sessions'" in out  # the regressed run is another scenario
    assert "cut was interrupted" in out
    assert "Read with care" in (tmp_path / "c.html").read_text()

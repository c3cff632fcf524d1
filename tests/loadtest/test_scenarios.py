"""Scenario files: the built-ins load and say what they expose; bad files name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploylab.errors import ConfigError, UsageError
from deploylab.loadtest.library import builtin_names, load_scenario

EXPECTED = {
    "chat-short": "synthetic",
    "rag": "rag",
    "interactive-long": "sessions",
    "multi-model-rare": "multi-model",
    "multi-lora": "multi-lora",
    "synthetic": "synthetic",
    "replay": "replay",
}

MINIMAL = """\
name: mine
description: my scenario
bottleneck: decode
slo:
  ttft_ms: {p99: 300}
workload:
  kind: synthetic
  input_tokens: 100
  output_tokens: {dist: uniform, min: 10, max: 20}
"""


def test_builtins_are_all_there_with_bottleneck_and_slos() -> None:
    assert set(builtin_names()) == set(EXPECTED)
    for name, kind in EXPECTED.items():
        loaded = load_scenario(name)
        sc = loaded.scenario
        assert sc.name == name and sc.workload.kind == kind
        assert loaded.source == f"builtin:{name}"
        assert len(sc.bottleneck) > 20 and len(sc.description) > 20
        assert sc.slo.ttft_ms is not None and sc.slo.ttft_ms.max_ms > 0
        assert sc.slo.error_rate is not None


def test_user_file_and_percentile_shorthand(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    loaded = load_scenario(str(path))
    assert loaded.source == str(path)
    bound = loaded.scenario.slo.ttft_ms
    assert bound is not None and (bound.percentile, bound.max_ms) == (99.0, 300.0)
    assert loaded.scenario.workload.input_tokens.mean == 100


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as info:
        load_scenario("chat-long")
    message = str(info.value)
    assert "Unknown scenario 'chat-long'" in message
    for name in EXPECTED:
        assert name in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(str(tmp_path / "nope.yaml"))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndescription: y\nworkload:\n  kind: [synthetic\n  input_tokens: 3\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(str(path))
    assert f"{path}:5: invalid YAML" in str(info.value)


def test_schema_errors_name_each_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        MINIMAL.replace("ttft_ms: {p99: 300}", "ttft_ms: {p99: -3}")
        .replace("input_tokens: 100", "input_tokens: 100\n  input_tokenz: 5")
        .replace("max: 20}", "max: 2}")
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(str(path))
    message = str(info.value)
    assert f"{path}:5: slo.ttft_ms.max_ms" in message
    assert f"{path}:9: workload.input_tokenz: unknown field" in message
    assert f"{path}:10: workload.output_tokens" in message and "min (10.0) is greater" in message


def test_missing_field_points_at_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "rag.yaml"
    path.write_text(
        "name: r\ndescription: d\nbottleneck: b\nworkload:\n  kind: rag\n"
        "  question_tokens: 10\n  output_tokens: 10\n"
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(str(path))
    assert f"{path}:4: workload.corpus: Field required" in str(info.value)


def test_rate_and_concurrency_together_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(MINIMAL + "load:\n  rate: 3\n  concurrency: 2\n")
    with pytest.raises(ConfigError, match=r"both.yaml:10: load: .*either concurrency"):
        load_scenario(str(path))


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml:1: a scenario file must be a YAML mapping"):
        load_scenario(str(path))

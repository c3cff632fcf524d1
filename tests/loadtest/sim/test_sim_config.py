"""Sim config files: presets, overrides, and line-numbered errors for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploylab.cli import main
from deploylab.errors import ConfigError
from deploylab.loadtest.sim import PRESETS, dump_config, load_config, parse_config


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_round_trip(name: str) -> None:
    config = load_config(preset=name)
    assert config.description and config.engine.kv_capacity_tokens > 1000
    assert parse_config(dump_config(config)) == config


def test_file_overrides_preset_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("preset: large-gpu\nitl:\n  base_ms: 5\n")
    config = load_config(path)
    large = load_config(preset="large-gpu")
    assert config.itl.base_ms == 5
    assert config.itl.per_running_request_ms == large.itl.per_running_request_ms
    assert config.ttft == large.ttft


BAD = [
    ("ttft:\n  base_ms: 1\nitl:\n  base_ms: fast\n", 4, "itl.base_ms"),
    ("itl:\n  base_ms: -3\n", 2, "greater than or equal to 0"),
    ("models:\n  - name: a\n  - name: b\n    lod_ms: 5\n", 4, "models.1.lod_ms: unknown field"),
    ("engine:\n  kv_capacity: 10\n", 2, "unknown field"),
    ("output:\n  distribution: zipf\n", 2, "output.distribution"),
    ("output:\n  min: 10\n  max: 5\n", 1, "min (10) must not exceed max (5)"),
    ("faults:\n  errors:\n    700: 0.1\n", 2, "700 is not an HTTP error status"),
    ("faults:\n  drop:\n    rate: 1.5\n", 3, "faults.drop.rate"),
    ("models: [{name: m}]\nadapters:\n  - {name: x, base: nope}\n", 2, "names base 'nope'"),
    ("models:\n  - {name: m, count: 3}\nresidency:\n  max_models: 2\n", 3, "preload: true"),
    ("models:\n  - {name: m, count: 2}\n  - {name: m-1}\n", 1, "'m-1' is defined twice"),
    ("ttft: {base_ms: 1\nitl: 2\n", 2, "invalid YAML"),
    ("- just\n- a list\n", 1, "must be a YAML mapping"),
]


@pytest.mark.parametrize(("text", "line", "needle"), BAD)
def test_bad_configs_name_file_and_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml")
    message = str(info.value)
    assert f"my.yaml:{line}:" in message, message
    assert needle in message, message


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="small-gpu, large-gpu"):
        load_config(preset="tiny-tpu")


def test_cli_reports_bad_config_with_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nitl:\n  base_ms: -1\n")
    assert main(["sim", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: itl.base_ms" in err.replace("\n", "")
    assert "Traceback" not in err
    assert main(["sim", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err

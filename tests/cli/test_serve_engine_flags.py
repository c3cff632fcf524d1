"""`deploylab serve` engine flags reach the `EngineConfig` the server loads (the server start
is replaced: only the flag parsing and the config run)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from deploylab.cli import app, main
from deploylab.server import launcher


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"cpu_compile": False, "kv_offload_write_ahead": False}),
        (["--cpu-compile"], {"cpu_compile": True}),
        (["--kv-offload-gib", "1", "--kv-offload-write-ahead"], {"kv_offload_write_ahead": True}),
    ],
)
def test_flags_reach_the_engine_config(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: dict[str, Any]
) -> None:
    seen: dict[str, Any] = {}

    def fake_run_server(load: Any, name: str, **kwargs: Any) -> None:
        cells = (c.cell_contents for c in load.__closure__)
        seen.update(zip(load.__code__.co_freevars, cells, strict=True))  # what `load` builds from

    monkeypatch.setattr(launcher, "serve", fake_run_server)
    result = CliRunner().invoke(app, ["serve", "--device", "cpu", *flags])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    for key, value in expected.items():
        assert getattr(config, key) == value


def test_write_ahead_without_a_host_tier_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []
    monkeypatch.setattr(launcher, "serve", lambda *a, **k: started.append("served"))
    code = main(["serve", "--device", "cpu", "--kv-offload-write-ahead"])
    assert code != 0 and not started
    assert "set kv_offload_gib > 0" in capsys.readouterr().err

"""The scale-out flags' bad inputs: clear messages, exit 2, nothing started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploylab.cli import main


def test_tensor_parallel_size_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--tensor-parallel-size", "0"]) == 2
    assert "--tensor-parallel-size must be >= 1" in capsys.readouterr().err


def test_tensor_parallel_size_that_does_not_fit_the_heads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default model has 3 KV heads: TP 4 is refused before any process starts."""
    assert main(["serve", "--device", "cpu", "--tensor-parallel-size", "4"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "tensor_parallel_size 4 does not fit this model's heads" in err


def test_ray_address_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(["loadtest", "-s", "chat-short", "--url", "http://127.0.0.1:9",
                 "--ray-address", "local", "--workers", "2", "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "pip install 'deploylab[ray]'" in " ".join(capsys.readouterr().err.split())

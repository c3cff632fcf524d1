"""`loadtest/` talks HTTP only: importing all of it never imports the engine or the server."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import deploylab.loadtest as loadtest


def test_loadtest_never_imports_engine_or_server() -> None:
    modules = [
        name
        for _, name, _ in pkgutil.walk_packages(loadtest.__path__, "deploylab.loadtest.")
        if ".sim" not in name  # the simulator is a separate part with its own rules
    ]
    modules += ["deploylab.cli.loadtest"]
    assert "deploylab.loadtest.runner" in modules and "deploylab.loadtest.worker" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.startswith(('deploylab.engine', 'deploylab.server')))\n"
        "print('IMPORTED', len(" + repr(modules) + "), 'BAD', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"IMPORTED {len(modules)} BAD []" in result.stdout

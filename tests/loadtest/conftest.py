"""Fixtures for load-test tests: a real stub HTTP server on loopback, the real tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STUB = Path(__file__).with_name("stub_server.py")
if str(STUB.parent) not in sys.path:  # `rawserver`, for the client tests (importlib mode)
    sys.path.insert(0, str(STUB.parent))


class StubServer:
    """Handle on the stub server subprocess: configure it, read what it saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def configure(self, **settings: Any) -> None:
        self._post("/control", settings)

    def reset(self) -> None:
        self._post("/reset", {})

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="session")
def stub_process() -> Iterator[StubServer]:
    proc = subprocess.Popen(
        [sys.executable, str(STUB)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"stub server did not start: {line}{proc.stdout.read()}")
    try:
        yield StubServer(int(line.split()[1]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def stub(stub_process: StubServer) -> StubServer:
    """The stub server, reset to its defaults."""
    stub_process.reset()
    return stub_process


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """The default model's real tokenizer (loading it takes ~10 s, so once per session)."""
    from tests.smol import smol_tokenizer

    return smol_tokenizer()

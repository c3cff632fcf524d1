"""Real `deploylab serve` processes on loopback ports, shared per test session."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """In-process engines and reference models on one torch thread (module scope, so that
    module fixtures get it too): beside the server subprocesses of these tests, a second
    OpenMP thread mostly waits for a busy core on 2 cores (many times slower). The servers
    themselves keep their own default."""
    from tests.smol import one_thread

    with one_thread():
        yield


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    """A running server subprocess and its address."""

    proc: subprocess.Popen[str]
    url: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp: Path, *args: str, timeout: float = 240) -> ServerProc:
    """Start `deploylab serve` and wait until /health answers 200."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    exe = Path(sys.executable).with_name("deploylab")
    cmd = [str(exe), "serve", "--model", MODEL, "--port", str(port), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    saw_503 = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()}")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 503:
                saw_503 = True
            if r.status_code == 200:
                server = ServerProc(proc, url, log)
                server.saw_loading = saw_503  # type: ignore[attr-defined]
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not healthy after {timeout}s:\n{log.read_text()}")


# The shared server's weights path; a server whose answers a test compares with the shared
# one's must run it too.
EXACT = ("--quantization", "none")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One real server with the real model for the whole session, on the exact float path:
    its tests compare answers across requests whose prompts meet different prefix-cache
    states, which only the exact path keeps bit-stable (docs/engine.md, "Quantized CPU
    path"); the servers the other fixtures start run the int4 default."""
    args = ("--max-num-seqs", "32", *EXACT)
    srv = start_server(tmp_path_factory.mktemp("serve"), *args)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start extra servers with their own flags; all are stopped at the end."""
    started: list[ServerProc] = []

    def start(*args: str) -> ServerProc:
        srv = start_server(tmp_path_factory.mktemp("serve-extra"), *args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop(signal.SIGKILL)


@contextlib.contextmanager
def serve_in_thread(engine: object, **state_fields: object) -> Iterator[str]:
    """The real app and uvicorn on a loopback port, in this process, around `engine` (for
    tests that reach inside the engine, e.g. to inject a fault); yields the base URL.
    `state_fields` set `ServerState` fields (e.g. allow_runtime_lora)."""
    import uvicorn

    from deploylab.server.app import ServerState, create_app

    state = ServerState(served_model_name=MODEL, engine=engine, **state_fields)  # type: ignore[arg-type]
    port = free_port()
    config = uvicorn.Config(
        create_app(state), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "in-process server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)

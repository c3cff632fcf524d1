"""Run the server: uvicorn on loopback by default, engine loaded in the background,
graceful drain on SIGTERM (vLLM's `--shutdown-timeout` semantics)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from deploylab.errors import ModelLoadError
from deploylab.server.app import ServerState, create_app


def serve(
    load_engine: Callable[[], Any],
    served_model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_timeout: float = 30.0,
    max_body_bytes: int = 4 * 1024 * 1024,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
    allow_runtime_lora: bool = False,
    enable_sleep_mode: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get `shutdown_timeout` seconds to finish,
    then fail with 503 (a stream with an error event and `[DONE]`); the process exits 0."""
    state = ServerState(
        served_model_name=served_model_name,
        max_body_bytes=max_body_bytes,
        enable_sleep_mode=enable_sleep_mode,
    )
    state.allow_runtime_lora = allow_runtime_lora
    app = create_app(state, load_engine)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # uvicorn's own limit comes after ours, so aborted streams still send their last event
        timeout_graceful_shutdown=int(shutdown_timeout) + _FLUSH_SECONDS,
        access_log=False,
    )
    server = _DrainingServer(config, state, shutdown_timeout)
    if on_ready is None:
        on_ready = _ignore
    url_host = f"[{host}]" if ":" in host else host
    threading.Thread(
        target=_announce,
        args=(server, state, f"http://{url_host}:{port}", on_ready),
        daemon=True,
    ).start()
    # uvicorn re-raises the signal it caught once it has drained; a no-op handler lets that
    # re-raise return, so a SIGTERM shutdown exits 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, _ignore_signal)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if state.load_error is not None:
        raise ModelLoadError(state.load_error)


_FLUSH_SECONDS = 5


class _DrainingServer(uvicorn.Server):
    """uvicorn that, on SIGTERM/SIGINT, also starts the app's shutdown timeout."""

    def __init__(self, config: uvicorn.Config, state: ServerState, timeout: float) -> None:
        super().__init__(config)
        self._state = state
        self._timeout = timeout

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.begin_shutdown(self._timeout)
        super().handle_exit(sig, frame)


def _announce(
    server: uvicorn.Server, state: ServerState, url: str, on_ready: Callable[[str], None]
) -> None:
    while not server.should_exit:
        if state.load_error is not None:
            server.should_exit = True  # nothing to serve: stop, serve() raises the error
            return
        if server.started and state.ready.is_set():
            on_ready(url)
            return
        time.sleep(0.05)


def _ignore(_: str) -> None:
    pass


def _ignore_signal(signum: int, frame: object) -> None:
    pass

"""Start `deploylab serve` as a subprocess for runs without `--url`, and stop it afterwards.

The server runs in its own session (process group) so that a Ctrl-C in the terminal reaches
only the load tester, which then saves partial results and stops the server itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from deploylab.errors import DeploylabError, TargetUnreachableError
from deploylab.loadtest.target import http_get

_POLL_S = 0.25


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """`deploylab serve` on a free loopback port; a context manager."""

    def __init__(
        self,
        log_path: Path,
        startup_timeout_s: float = 300.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.command = [sys.executable, "-m", "deploylab", "serve", "--port", str(self.port)]
        self.command += list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> str:
        """Start the server and wait until `/health` answers 200; return its base URL."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        try:
            return self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> str:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise DeploylabError(
                    f"`deploylab serve` exited with code {code} before it was ready. Its log "
                    f"({self.log_path}) ends with:\n{self._log_tail()}"
                )
            try:
                status, _ = http_get(self.base_url + "/health", timeout_s=2.0)
                if status == 200:
                    return self.base_url
            except TargetUnreachableError:
                pass
            time.sleep(_POLL_S)
        raise TargetUnreachableError(
            f"`deploylab serve` did not answer /health within {self.startup_timeout_s:g} s. "
            f"See its log {self.log_path}:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

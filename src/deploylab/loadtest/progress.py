"""Live progress in the terminal: elapsed time, requests done and failed, current rate, running
median TTFT. Workers send counts every half second; this aggregates and renders them."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import TracebackType

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.text import Text

from deploylab.loadtest.worker import ProgressUpdate

_RATE_WINDOW_S = 5.0


class LiveProgress:
    """Aggregates worker progress; as a context manager, shows it with rich."""

    def __init__(
        self,
        console: Console | None = None,
        duration_s: float | None = None,
        requests: int | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.duration_s, self.requests = duration_s, requests
        self.done = self.failed = self.in_flight = 0
        self.ttft: deque[float] = deque(maxlen=500)
        self.completions: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._live: Live | None = None

    def update(self, upd: ProgressUpdate) -> None:
        """Add one worker's counts since its last update (thread-safe)."""
        now = time.monotonic()
        with self._lock:
            self.done += upd.done
            self.failed += upd.failed
            self.in_flight += upd.in_flight
            self.ttft.extend(upd.ttft_ms)
            if upd.done:
                self.completions.append((now, upd.done))
            while self.completions and self.completions[0][0] < now - _RATE_WINDOW_S:
                self.completions.popleft()

    def line(self) -> str:
        """The one-line status."""
        with self._lock:
            elapsed = time.monotonic() - self._t0
            span = min(elapsed, _RATE_WINDOW_S) or 1.0
            rate = sum(n for _, n in self.completions) / span
            p50 = float(np.median(self.ttft)) if self.ttft else None
            done, failed, flying = self.done, self.failed, self.in_flight
        bound = ""
        if self.duration_s is not None:
            bound = f" / {self.duration_s:.0f} s"
        total = f"/{self.requests}" if self.requests is not None else ""
        ttft = f"{p50:.1f} ms" if p50 is not None else "-"
        return (
            f"elapsed {elapsed:6.1f} s{bound}  done {done}{total}  failed {failed}  "
            f"in flight {max(flying, 0)}  rate {rate:.2f} req/s  p50 TTFT {ttft}"
        )

    def _render(self) -> Text:
        return Text(self.line())

    def __enter__(self) -> LiveProgress:
        self._t0 = time.monotonic()
        self._live = Live(
            get_renderable=self._render,
            console=self.console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None
            if not self.console.is_terminal:
                self.console.line()  # end the status line before the summary

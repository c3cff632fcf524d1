"""Helpers for the simulator tests: a sim on a background loop, and a timing HTTP client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from deploylab.loadtest.sim import SimThread, parse_config
from deploylab.loadtest.sim.engine import Scheduled


@dataclass
class Streamed:
    """One request as the client saw it: status, seconds to headers and to each event."""

    status: int
    headers_s: float
    event_s: list[float] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    error: str | None = None
    body: Any = None
    started: float = 0.0  # perf_counter() when the request was sent

    @property
    def ttft_s(self) -> float:
        return self.event_s[0]

    @property
    def gaps_s(self) -> list[float]:
        """Gaps between consecutive token events (usage and [DONE] excluded)."""
        tokens = [t for t, e in zip(self.event_s, self.events, strict=True) if b'"choices":[{' in e]
        return [b - a for a, b in zip(tokens, tokens[1:], strict=False)]


@contextmanager
def run_sim(yaml_text: str) -> Iterator[SimThread]:
    """A simulator built from config YAML, serving on a free loopback port, recording what it
    intends for every request (`sim.schedule()`)."""
    with SimThread(parse_config(yaml_text, "test.yaml")) as sim:
        sim.record_schedule()
        yield sim


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    path: str = "/v1/completions",
) -> Streamed:
    """POST a request; time the response headers and every server-sent event."""
    start = time.perf_counter()
    try:
        async with session.post(url + path, json=body) as resp:
            result = Streamed(resp.status, time.perf_counter() - start, started=start)
            if not body.get("stream") or resp.status != 200:
                result.body = await resp.json()
                return result
            async for line in resp.content:
                if line.startswith(b"data: "):
                    result.event_s.append(time.perf_counter() - start)
                    result.events.append(line[6:].strip())
            return result
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        partial = locals().get("result") or Streamed(0, time.perf_counter() - start)
        partial.error = type(exc).__name__
        return partial


def ids(n: int, start: int = 1000) -> list[int]:
    """A prompt of exactly n token ids."""
    return list(range(start, start + n))


def ttft_law(plan: Scheduled) -> float:
    """The TTFT the simulator scheduled: first token's intended time minus the arrival."""
    return plan.token_due[0] - plan.arrival


def gaps(plan: Scheduled) -> list[float]:
    """The intended gaps between consecutive tokens of one request."""
    return [b - a for a, b in zip(plan.token_due, plan.token_due[1:], strict=False)]


def exactly(value_s: float, expected_s: float) -> bool:
    """The simulator's own schedule follows its law to float precision (no stopwatch)."""
    return abs(value_s - expected_s) < 1e-6


def never_early(measured_s: float, scheduled_s: float) -> bool:
    """A client never sees a token before the simulator scheduled it (the clocks agree to well
    under a millisecond); how much later is the machine's business, not a test's."""
    return measured_s >= scheduled_s - 0.001

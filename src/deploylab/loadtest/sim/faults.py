"""Fault injection: decides, per request, which configured failure (if any) it suffers."""

from __future__ import annotations

import random
from dataclasses import dataclass

from deploylab.loadtest.sim.config import Faults

NO_TOKEN = -1  # "never": a token index no request reaches


@dataclass(slots=True)
class FaultPlan:
    """What happens to one request: an error status, or delays and a drop during the stream."""

    error_status: int | None = None
    slow_first_byte_s: float = 0.0
    stall_before_token: int = NO_TOKEN
    stall_s: float = 0.0
    drop_before_token: int = NO_TOKEN
    truncate_before_token: int = NO_TOKEN  # streamed answers end here: [DONE], no finish


class FaultInjector:
    """Draws a FaultPlan per request from the configured rates (seeded, so runs repeat)."""

    def __init__(self, faults: Faults, rng: random.Random) -> None:
        self._faults = faults
        self._rng = rng
        self._errors = sorted(faults.errors.items())
        self.active = bool(
            self._errors
            or faults.stall.rate
            or faults.drop.rate
            or faults.slow_first_byte.rate
            or faults.truncate.rate
        )
        self.counts: dict[str, int] = {
            "error": 0, "stall": 0, "drop": 0, "slow_first_byte": 0, "truncate": 0,
        }  # fmt: skip
        self.errors_by_status: dict[int, int] = {}

    def plan(self) -> FaultPlan | None:
        """The faults for the next request, or None for a healthy one."""
        if not self.active:
            return None
        rng, faults = self._rng, self._faults
        draw = rng.random()
        for status, rate in self._errors:
            if draw < rate:
                self.counts["error"] += 1
                self.errors_by_status[status] = self.errors_by_status.get(status, 0) + 1
                return FaultPlan(error_status=status)
            draw -= rate
        plan = FaultPlan()
        hit = False
        if rng.random() < faults.slow_first_byte.rate:
            plan.slow_first_byte_s = faults.slow_first_byte.delay_ms / 1e3
            self.counts["slow_first_byte"] += 1
            hit = True
        if rng.random() < faults.stall.rate:
            plan.stall_before_token = faults.stall.after_tokens
            plan.stall_s = faults.stall.duration_ms / 1e3
            self.counts["stall"] += 1
            hit = True
        if rng.random() < faults.drop.rate:
            plan.drop_before_token = faults.drop.after_tokens
            self.counts["drop"] += 1
            hit = True
        if faults.truncate.rate and rng.random() < faults.truncate.rate:  # no draw when off
            plan.truncate_before_token = faults.truncate.after_tokens
            self.counts["truncate"] += 1
            hit = True
        return plan if hit else None

"""The verify step's cost model: step seconds ≈ a + b·tokens + c·drafting sequences.

Fitted by least squares to timed forward passes of the engine's own model runner at start-up
(`calibrate`: dummy decode batches with and without k drafts, on the empty KV cache) and then
refined from the engine's timed decode steps (`CostModel.observe`). The start-up fit stays as
a ridge prior, so steps that never vary the token count cannot make the fit singular.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner

Observation = tuple[int, int, float]  # tokens in the pass, drafting sequences, seconds


class CostModel:
    """Seconds of one decode step as a linear function of its tokens and drafting sequences."""

    def __init__(self, prior: list[Observation], decay: float = 0.98) -> None:
        if len(prior) < 3:
            raise ValueError("a cost model needs at least 3 timed passes")
        x = np.array([[1.0, n, m] for n, m, _ in prior])
        y = np.array([s for _, _, s in prior])
        # The prior passes never decay: they keep the fit defined when steps do not vary.
        self._prior_xtx, self._prior_xty = x.T @ x, x.T @ y
        self._xtx = np.zeros((3, 3))
        self._xty = np.zeros(3)
        self.decay = decay
        self._floor = float(y.min()) * 0.05
        self.num_observations = 0
        self.theta = np.zeros(3)
        self._solve()

    @classmethod
    def from_coefficients(cls, a: float, b: float, c: float = 0.0) -> CostModel:
        """A model whose prior is exactly a + b·tokens + c·drafting (tests, given costs)."""
        if a <= 0 or b < 0 or c < 0:
            raise ValueError(f"cost coefficients need a > 0, b >= 0, c >= 0; got {a}, {b}, {c}")
        grid = [(1, 0), (16, 0), (5, 1), (80, 16), (40, 4)]
        return cls([(n, m, a + b * n + c * m) for n, m in grid])

    def _solve(self) -> None:
        xtx = self._prior_xtx + self._xtx + np.eye(3) * 1e-12
        theta = np.linalg.lstsq(xtx, self._prior_xty + self._xty, rcond=None)[0]
        self.theta = np.array(_clamp(theta, self._floor))

    @property
    def coefficients(self) -> tuple[float, float, float]:
        """(a, b, c) in seconds: per step, per token, per drafting sequence."""
        a, b, c = self.theta
        return float(a), float(b), float(c)

    def cost(self, tokens: int, drafting: int) -> float:
        """Predicted seconds of a decode step."""
        a, b, c = self.theta
        return float(a + b * tokens + c * drafting)

    def observe(self, tokens: int, drafting: int, seconds: float) -> None:
        """Add one timed decode step (older steps decay) and refit."""
        x = np.array([1.0, tokens, drafting])
        self._xtx = self.decay * self._xtx + np.outer(x, x)
        self._xty = self.decay * self._xty + x * seconds
        self.num_observations += 1
        self._solve()


def prior_model(obs: list[Observation]) -> CostModel:
    """The start-up cost model from `calibrate`'s passes. One batch size (max_num_seqs 1)
    gives two passes, too few for three terms: the verify pass's extra time then goes to the
    per-token term (it was taken as free, so at batch 1 the policy drafted even when the
    verify pass cost more than its drafts saved: 0.70x for the head on chat, int4)."""
    if len(obs) >= 3:
        return CostModel(obs)
    plain = min((o for o in obs if o[1] == 0), key=lambda o: o[0])
    drafted = max(obs, key=lambda o: o[0])
    extra = drafted[0] - plain[0]
    b = max(drafted[2] - plain[2], 0.0) / extra if extra > 0 else 0.0
    return CostModel.from_coefficients(max(plain[2] - b * plain[0], 1e-9), b, 0.0)


def _clamp(theta: np.ndarray, floor: float) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in theta)
    return max(a, floor, 1e-9), max(b, 0.0), max(c, 0.0)


def _dummy_batch(batch: int, k: int, context: int, first_block: int, bs: int) -> SchedulerOutput:
    """`batch` decoding sequences with `context` cached tokens and k drafts each, on blocks
    from `first_block` on (garbage keys and values: attention costs the same)."""
    out = SchedulerOutput()
    per_seq = -(-(context + k + 1) // bs)
    params = SamplingParams(temperature=0)
    for i in range(batch):
        seq = Sequence(f"calib{i}", [1] * (context + 1 + k), params, arrival=i)
        seq.num_computed_tokens = context
        seq.num_draft_tokens = k
        start = first_block + i * per_seq
        seq.block_table = list(range(start, start + per_seq))
        out.scheduled.append(ScheduledSeq(seq, 1 + k))
    return out


def calibrate(
    runner: ModelRunner, num_free_blocks: int, k: int, max_batch: int, context: int = 64
) -> list[Observation]:
    """Time forward passes (logits included) of dummy decode batches of 1 and 8 sequences
    (capped by `max_batch` and the free blocks), without drafts and with k each.
    Must run while the KV cache holds nothing (at engine start): it writes free blocks."""
    bs = runner.block_size
    per_seq = -(-(context + k + 1) // bs)
    cap = min(max_batch, num_free_blocks // per_seq)
    sizes = sorted({min(b, cap) for b in (1, 8) if cap >= 1})
    obs: list[Observation] = []
    for batch in sizes:
        for drafts in (0, k):
            out = _dummy_batch(batch, drafts, context, 0, bs)
            best = float("inf")
            for _ in range(2):  # the first run warms caches; keep the fastest
                t0 = time.perf_counter()
                runner.execute(out)
                if runner.device.type == "cuda":
                    torch.cuda.synchronize(runner.device)
                best = min(best, time.perf_counter() - t0)
            obs.append((batch * (1 + drafts), batch if drafts else 0, best))
    return obs

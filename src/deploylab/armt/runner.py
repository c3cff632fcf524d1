"""Run an ARMT executor on token ids and score the result (what `deploylab armt run` shows)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deploylab.armt.diagonal import run_diagonal
from deploylab.armt.model import ARMTModel
from deploylab.armt.output import ARMTOutput
from deploylab.armt.sequential import run_sequential
from deploylab.errors import UsageError

EXECUTORS = ("diagonal", "sequential")
_CHUNK = 1024  # rows of logits materialised at a time


@dataclass
class RunReport:
    """One executor's run over a text."""

    executor: str
    seconds: float
    num_tokens: int
    num_segments: int
    num_steps: int
    next_token: int
    mean_nll: float | None  # None for a one-token input

    @property
    def perplexity(self) -> float | None:
        return None if self.mean_nll is None else math.exp(self.mean_nll)


def execute(
    model: ARMTModel, ids: torch.Tensor, executor: str, backend: str = "bmm"
) -> tuple[ARMTOutput, float]:
    """Run `executor` ("diagonal" or "sequential") keeping all hidden states; (output, s)."""
    if executor not in EXECUTORS:
        raise UsageError(f"Unknown executor '{executor}'. Choose diagonal or sequential.")
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    t0 = time.perf_counter()
    if executor == "diagonal":
        out = run_diagonal(model, ids, keep_hidden=True, backend=backend)
    else:
        out = run_sequential(model, ids, keep_hidden=True)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return out, time.perf_counter() - t0


@torch.inference_mode()
def mean_nll(model: ARMTModel, hidden: torch.Tensor, ids: torch.Tensor) -> float | None:
    """Mean next-token negative log-likelihood of `ids` `[1, N]` under `hidden` `[1, N, D]`,
    computed in chunks so the full logits never exist at once."""
    n = ids.shape[1]
    if n < 2:
        return None
    total = 0.0
    for a in range(0, n - 1, _CHUNK):
        b = min(a + _CHUNK, n - 1)
        logits = model.compute_logits(hidden[0, a:b])
        total += float(F.cross_entropy(logits, ids[0, a + 1 : b + 1], reduction="sum"))
    return total / (n - 1)


@torch.inference_mode()
def max_logit_diff(model: ARMTModel, h1: torch.Tensor, h2: torch.Tensor) -> float:
    """max |logits(h1) − logits(h2)| over all positions, chunk by chunk."""
    worst = 0.0
    for a in range(0, h1.shape[1], _CHUNK):
        d = model.compute_logits(h1[:, a : a + _CHUNK]) - model.compute_logits(
            h2[:, a : a + _CHUNK]
        )
        worst = max(worst, float(d.abs().max()))
    return worst


def report(
    model: ARMTModel, executor: str, ids: torch.Tensor, backend: str
) -> tuple[RunReport, ARMTOutput]:
    """Run and score one executor on `ids` `[1, N]`."""
    ids = ids.to(model.device)
    out, seconds = execute(model, ids, executor, backend)
    assert out.hidden is not None
    next_token = int(model.compute_logits(out.last_hidden).argmax(-1)[0])
    rep = RunReport(
        executor=executor,
        seconds=seconds,
        num_tokens=ids.shape[1],
        num_segments=out.num_segments,
        num_steps=out.num_steps,
        next_token=next_token,
        mean_nll=mean_nll(model, out.hidden, ids),
    )
    return rep, out

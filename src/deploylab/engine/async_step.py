"""Async scheduling (vLLM's `async_scheduling`): the host works while the device computes.

One `step()` call, with step n already launched:

1. schedule step n+1 (the sequences of step n decode their token still in flight: it stands
   in `token_ids` as a negative placeholder, -1 - its row in step n's sampled tokens);
2. launch step n+1: inputs built and uploaded through pinned memory, placeholders replaced
   on the device from step n's token tensor, forward, sampling on the device, the tokens
   copied back to pinned memory with `non_blocking` and an event recorded;
3. wait for step n's event (its kernels ended before step n+1's) and do its bookkeeping:
   placeholders replaced by the real tokens, detokenisation, stop checks, deltas — while the
   device runs step n+1;
4. mark step n+1's tokens computed and append its placeholders.

A sequence that stops at step n (EOS, stop token, stop string) was already in step n+1; that
extra token is discarded, never reported. One whose length makes step n's token its last
(`max_tokens`, the context) gets no placeholder, so it is not scheduled again. An abort
drops the placeholder at once. Steps that need the host's tokens or more than the sampled
token (prompt logprobs, penalties, structured output, the prefill that forks `n` samples)
run synchronously after the step in flight is finished; speculative decoding,
KV tiers and tensor parallelism turn the feature off for the engine. LoRA combines: a
step's adapter rows are known when it is scheduled, and a slot freed by a request that
finished in step n is refilled by copies queued behind step n+1 on the same stream (opt-in
with LoRA: the default leaves LoRA engines synchronous until this has run on a GPU).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from deploylab.engine.backref import EngineBackRef
from deploylab.engine.outputs import TokenLogprobs
from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence

if TYPE_CHECKING:
    from deploylab.engine.llm_engine import LLMEngine
    from deploylab.engine.outputs import RequestDelta

logger = logging.getLogger(__name__)


def fill_placeholders(ids: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """`ids` with each negative id -1 - i replaced by `fill[i]` (on the device, no sync)."""
    rows = (-1 - ids).clamp_(min=0)
    return torch.where(ids < 0, fill[rows], ids)


class HostStager:
    """Host-to-device copies that never wait for the device: on CUDA each goes through one of
    `slots` persistent pinned buffers (round robin, grown on demand), reused only after the
    event recorded behind its last copy has passed. On the CPU tensors pass through."""

    def __init__(self, device: torch.device, slots: int = 8) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._events: list[Any] = [None] * slots
        self._next = 0

    def upload(self, t: torch.Tensor) -> torch.Tensor:
        """`t` on the device (its copy is queued on the current stream)."""
        if not self.cuda:
            return t
        i = self._next
        self._next = (i + 1) % len(self._buffers)
        event = self._events[i]
        if event is not None:
            event.synchronize()  # the copy that last used this buffer has run (long ago)
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        buf = self._buffers[i]
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.uint8, pin_memory=True)
            self._buffers[i] = buf
        staged = buf[:nbytes].view(t.dtype).view(t.shape)
        staged.copy_(t)
        out = staged.to(self.device, non_blocking=True)
        if event is None:
            event = self._events[i] = torch.cuda.Event()
        event.record()
        return out


def drop_placeholder(seq: Sequence) -> None:
    """Remove the in-flight token's placeholder from `seq` (if it has one)."""
    ids = seq.token_ids
    while ids and ids[-1] < 0:
        ids.pop()


def _needs_host(item: ScheduledSeq) -> bool:
    """True when this batch item needs a synchronous step (host tokens, logprobs, forks)."""
    seq = item.seq
    p = seq.params
    if seq.pending_forks and item.samples:
        return True
    if p.prompt_logprobs is not None and seq.num_computed_tokens < seq.num_prompt_tokens:
        return True
    return (
        seq.structured is not None
        or p.repetition_penalty != 1.0
        or bool(p.presence_penalty)
        or bool(p.frequency_penalty)
    )


def _last_token(seq: Sequence, max_model_len: int) -> bool:
    """True when the token being sampled for `seq` ends it by length."""
    limit = seq.params.max_tokens
    return (limit is not None and seq.num_output_tokens + 1 >= limit) or (
        seq.num_tokens + 1 >= max_model_len
    )


@dataclass
class _InFlight:
    """A launched step whose sampled tokens are not read yet."""

    out: SchedulerOutput
    seqs: list[Sequence]  # one per sampled row
    tokens: torch.Tensor | None  # on the device
    host: list[torch.Tensor]  # tokens, then chosen/top logprobs: host copies (pinned on CUDA)
    event: Any  # torch.cuda.Event after the copies, None on the CPU
    faults: dict[int, BaseException] = field(default_factory=dict)
    lp_rows: list[int] = field(default_factory=list)  # rows that asked for logprobs


def _device_logprobs(
    raw: torch.Tensor, tokens: torch.Tensor, seqs: list[Sequence], rows: list[int]
) -> list[torch.Tensor]:
    """The chosen tokens' logprobs of `rows` and their top-k (values, ids), on the device."""
    idx = torch.tensor(rows, dtype=torch.int64).to(raw.device, non_blocking=True)
    sel = raw.index_select(0, idx)
    chosen = sel.gather(1, tokens.index_select(0, idx)[:, None])[:, 0]
    kmax = max(seqs[i].params.logprobs or 0 for i in rows)
    if not kmax:
        return [chosen]
    top = sel.topk(kmax, dim=-1)
    return [chosen, top.values, top.indices]


def _logprobs(prev: _InFlight, tokens: list[int]) -> list[TokenLogprobs | None]:
    """Per sampled row, its `TokenLogprobs` (None where not asked for) from the host copies."""
    result: list[TokenLogprobs | None] = [None] * len(tokens)
    if not prev.lp_rows:
        return result
    chosen: list[float] = prev.host[1].tolist()
    top_vals: list[list[float]] = prev.host[2].tolist() if len(prev.host) > 2 else []
    top_ids: list[list[int]] = prev.host[3].tolist() if len(prev.host) > 3 else []
    for j, i in enumerate(prev.lp_rows):
        k = prev.seqs[i].params.logprobs or 0
        alternatives = tuple(zip(top_ids[j][:k], top_vals[j][:k], strict=True)) if k else ()
        result[i] = TokenLogprobs(tokens[i], chosen[j], alternatives)
    return result


class OverlapStepper:
    """The engine's step with the host one step ahead of the device."""

    engine = EngineBackRef()  # weak: no engine <-> helper cycle

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.inflight: _InFlight | None = None
        self.steps_overlapped = 0
        self.steps_sync = 0
        self.wait_seconds = 0.0  # host time spent waiting for sampled tokens

    def step(self) -> list[RequestDelta]:
        """Launch the next step, then finish the one before it; that step's deltas."""
        eng = self.engine
        prev, self.inflight = self.inflight, None
        eng._batch = list(prev.seqs) if prev is not None else None
        out = eng.scheduler.schedule()
        if out.is_empty:
            return self._finish(prev)
        if any(_needs_host(item) for item in out.scheduled):
            deltas = self._finish(prev)
            out.scheduled = [s for s in out.scheduled if not s.seq.is_finished]
            if not out.scheduled:
                return deltas
            self.steps_sync += 1
            return deltas + eng._execute_scheduled(out)
        eng._batch = [*(eng._batch or ()), *(item.seq for item in out.scheduled)]
        cur = self._launch(out, prev)
        deltas = self._finish(prev)
        self._settle(cur)
        self.inflight = cur
        self.steps_overlapped += 1
        return deltas

    def _launch(self, out: SchedulerOutput, prev: _InFlight | None) -> _InFlight:
        """Forward and sample on the device; start the tokens' copy back to the host."""
        eng = self.engine
        eng._steps += 1
        runner = eng.runner
        runner.token_fill = prev.tokens if prev is not None else None
        try:
            seqs, logits = runner.execute(out)
        finally:
            runner.token_fill = None
        if logits is None:
            return _InFlight(out, [], None, [], None)
        faults: dict[int, BaseException] = {}
        lp_rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        with torch.inference_mode():
            raw = torch.log_softmax(logits, dim=-1) if lp_rows else None  # before sampling
            tokens = eng.sampler.sample(logits, seqs, faults)
            parts = [tokens]
            if raw is not None:
                parts += _device_logprobs(raw, tokens, seqs, lp_rows)
        host, event = parts, None
        if tokens.device.type == "cuda":
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in parts]
            for h, t in zip(host, parts, strict=True):
                h.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return _InFlight(out, seqs, tokens, host, event, faults, lp_rows)

    def _finish(self, prev: _InFlight | None) -> list[RequestDelta]:
        """Wait for a launched step's tokens and do its bookkeeping."""
        if prev is None or not prev.host:
            return []
        if prev.event is not None:
            t0 = time.perf_counter()
            prev.event.synchronize()
            self.wait_seconds += time.perf_counter() - t0
        tokens: list[int] = prev.host[0].tolist()
        for seq in prev.seqs:
            drop_placeholder(seq)
        return self.engine._append_tokens(prev.seqs, tokens, _logprobs(prev, tokens), prev.faults)

    def _settle(self, cur: _InFlight) -> None:
        """After the previous step's bookkeeping: mark the launched step's tokens computed
        and stand a placeholder for each token it samples (unless it is the last)."""
        eng = self.engine
        live = [item for item in cur.out.scheduled if not item.seq.is_finished]
        eng.scheduler.update_after_step(SchedulerOutput(scheduled=live))
        max_len = eng.max_model_len
        for i, seq in enumerate(cur.seqs):
            if seq.is_finished or i in cur.faults or _last_token(seq, max_len):
                continue
            seq.token_ids.append(-1 - i)

    def reset(self) -> None:
        """Forget the step in flight (after a failed step) and drop every placeholder."""
        self.inflight = None
        sched = self.engine.scheduler
        for seq in [*sched.running, *sched.waiting]:
            drop_placeholder(seq)


def make_overlap(engine: LLMEngine) -> OverlapStepper | None:
    """The async-scheduling stepper when `EngineConfig.async_scheduling` is on and every
    engine-wide feature combines with it (else None: synchronous steps, with a warning)."""
    wanted = engine.config.async_scheduling
    if wanted is None:  # the default: on where it pays (CUDA), silently off where it can't
        wanted = engine.device.type == "cuda"
    if not wanted:
        return None
    if engine.config.async_scheduling is None and engine.lora is not None:
        return None  # LoRA with async scheduling: tested on the CPU, not yet on a GPU (opt-in)
    blockers = [
        name
        for name, on in (
            ("speculative decoding", engine.spec is not None),
            ("KV cache tiers", engine.kv_tiers is not None),
            ("tensor parallelism", engine.tp is not None),
        )
        if on
    ]
    if blockers:
        if engine.config.async_scheduling is None:
            return None
        logger.warning(
            "async scheduling does not combine with %s yet; the engine steps synchronously",
            ", ".join(blockers),
        )
        return None
    return OverlapStepper(engine)

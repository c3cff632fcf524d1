"""From raw nanosecond records to the results' request records, and the measurement window.

Service time is measured from the actual send; response time from the scheduled send, so
client backlog (a late send) counts against the latency instead of hiding (no coordinated
omission). Output tokens come from the server's `usage` when it reports it, else from the
tokenizer given with `--tokenizer`, else from the number of text chunks (one token per chunk
for most servers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deploylab.loadtest.client import RawRecord
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.results import RequestRecord
from deploylab.loadtest.text import count_tokens


def _ms(ns: int) -> float:
    return round(ns / 1e6, 4)


def output_token_counts(raws: Sequence[RawRecord], tokenizer: Any | None) -> list[tuple[int, str]]:
    """(count, source) for each record."""
    need = [i for i, r in enumerate(raws) if r.completion_tokens is None and r.text]
    counted: dict[int, int] = {}
    if tokenizer is not None and need:
        for i, n in zip(need, count_tokens(tokenizer, [raws[i].text for i in need]), strict=True):
            counted[i] = n
    out = []
    for i, r in enumerate(raws):
        if r.completion_tokens is not None:
            out.append((r.completion_tokens, "usage"))
        elif i in counted:
            out.append((counted[i], "tokenizer"))
        else:
            out.append((len(r.chunk_ns), "chunks"))
    return out


def stopped_short(raw: RawRecord, n_out: int, ignore_eos: bool) -> bool:
    """Whether an answer stopped (`stop`) before max_tokens although ignore_eos was asked: the
    server ignores ignore_eos (llama.cpp does). Such an answer is completed-short, not failed."""
    if not ignore_eos or raw.error_kind not in (None, "empty_output"):
        return False
    return raw.finish_reasons.get(0) == "stop" and n_out < raw.max_tokens


def to_record(
    raw: RawRecord,
    start_ns: int,
    output: tuple[int, str],
    window: tuple[float, float],
    ignore_eos: bool = False,
) -> RequestRecord:
    """One results record (times relative to the run's start). With `ignore_eos` (asked of
    the server), an answer that stopped before max_tokens is completed-short, never failed."""
    sent_ns = raw.sent_ns or raw.scheduled_ns
    short = stopped_short(raw, output[0], ignore_eos)
    if short:
        raw.error_kind = raw.error_detail = None  # an empty answer that stopped at once
    ok = raw.error_kind is None
    chunks = raw.chunk_ns
    first = chunks[0] if chunks else None
    n_out, source = output
    e2e = raw.end_ns - sent_ns
    ttft = None if first is None else first - sent_ns
    tpot = None
    if ok and ttft is not None and n_out > 1:
        tpot = round((e2e - ttft) / (n_out - 1) / 1e6, 4)
    scheduled_s = (raw.scheduled_ns - start_ns) / 1e9
    return RequestRecord(
        id=raw.index,
        turn=raw.turn,
        worker=raw.worker,
        session=raw.session,
        model=raw.model,
        classes=raw.classes,
        scheduled_s=round(scheduled_s, 6),
        sent_s=round((sent_ns - start_ns) / 1e9, 6),
        lateness_ms=_ms(sent_ns - raw.scheduled_ns),
        in_window=window[0] <= scheduled_s <= window[1],
        ok=ok,
        error_kind=raw.error_kind,
        error_detail=raw.error_detail,
        status=raw.status,
        ttft_ms=None if ttft is None else _ms(ttft),
        ttft_response_ms=None if first is None else _ms(first - raw.scheduled_ns),
        e2e_ms=_ms(e2e),
        e2e_response_ms=_ms(raw.end_ns - raw.scheduled_ns),
        tpot_ms=tpot,
        itl_ms=[_ms(b - a) for a, b in zip(chunks, chunks[1:], strict=False)],
        chunk_times_ms=[_ms(c - sent_ns) for c in chunks],
        input_tokens=raw.prompt_tokens or raw.planned_input_tokens,
        input_tokens_source="usage" if raw.prompt_tokens else "planned",
        output_tokens=n_out,
        output_tokens_source=source,
        max_tokens=raw.max_tokens,
        finish_reason=raw.finish_reasons.get(0),
        completed_short=short,
    )


def measurement_window(
    raws: Sequence[RawRecord],
    start_ns: int,
    load: LoadConfig,
    stopped_ns: int | None = None,
) -> tuple[float, float]:
    """[warm-up end, send phase end - cool-down] in seconds since the start.

    The send phase ends at `duration_s` when the run is bounded by time, else when the last
    request finished; an interrupted run (`stopped_ns`: when Ctrl-C came) ends there at the
    latest, and its cool-down is not taken off (the run never reached it). If warm-up and
    cool-down leave nothing, the whole run is measured.
    """
    last_end = max((r.end_ns for r in raws), default=start_ns)
    run_end = (last_end - start_ns) / 1e9
    end = load.duration_s if load.duration_s is not None else run_end
    cooldown = load.cooldown_s
    if stopped_ns is not None:
        # Workers see the stop within their poll interval (~50 ms): a request they scheduled
        # after Ctrl-C is in the results, so the window reaches it.
        stopped_ns = max([stopped_ns, *(r.scheduled_ns for r in raws)])
        stopped_s = max((stopped_ns - start_ns) / 1e9, 0.0)
        if stopped_s < end:
            end, cooldown = stopped_s, 0.0
    window = (load.warmup_s, end - cooldown)
    if window[1] <= window[0]:
        return (0.0, max(end, 0.0))
    return window


def mark_first_requests(records: list[RequestRecord]) -> None:
    """Class `model_first_request`: yes for the first request sent to each model."""
    seen: set[str] = set()
    for rec in sorted(records, key=lambda r: r.sent_s):
        rec.classes["model_first_request"] = "no" if rec.model in seen else "yes"
        seen.add(rec.model)

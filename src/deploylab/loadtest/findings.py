"""What a run's numbers mean, in sentences: first error messages of each class, a client that
fell behind its schedule, a run that overran its duration, failures hidden in the warm-up, a
server that ignores ignore_eos, token counts without usage, and a window rate far from the
whole run's. The terminal summary and the HTML report print the same findings (SLO
explanations are in `explain.py`)."""

from __future__ import annotations

import json

from deploylab.loadtest.results import Results, Summary

LATENESS_P99_MS = 5.0  # a client later than this at p99 measured itself, not only the server
_OVERRUN_S = 10.0  # a run that takes this much (and half its duration) longer says why
_RATE_GAP = 2.0  # window and whole-run token rates this many times apart are both shown
_SOURCES = {"usage": "the server's usage", "tokenizer": "the tokenizer", "chunks": "text chunks"}


def error_message(detail: str | None) -> str:
    """The human part of an error detail: an OpenAI-style JSON error's `message` (or a
    `detail` / `message` field), else the text itself; on one line, at most 300 characters."""
    text = (detail or "").strip()
    body = text[text.find("{") :] if "{" in text else ""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error", data)
        found = inner.get("message") if isinstance(inner, dict) else inner
        found = found or data.get("detail") or data.get("message")
        if isinstance(found, str) and found.strip():
            prefix = text[: text.find("{")].strip(" :")
            text = f"{prefix}: {found.strip()}" if prefix else found.strip()
    return " ".join(text.split())[:300]


def error_examples(results: Results, per_kind: int = 2) -> dict[str, list[str]]:
    """The first distinct messages of each error kind, in order of occurrence (measured
    requests first), cut to 300 characters."""
    examples: dict[str, list[str]] = {}
    ordered = sorted(results.requests, key=lambda r: (not r.in_window, r.sent_s))
    for r in ordered:
        if r.ok or r.error_kind is None or r.error_kind == "cancelled":
            continue
        seen = examples.setdefault(r.error_kind, [])
        detail = error_message(r.error_detail)
        if detail and detail not in seen and len(seen) < per_kind:
            seen.append(detail)
    return examples


def lateness_warning(summary: Summary) -> str | None:
    """A warning when the client sent late: its p99 schedule lateness over a few ms."""
    p99 = summary.schedule_lateness_ms.p99
    if p99 is None or p99 <= LATENESS_P99_MS:
        return None
    text = (
        f"the load generator itself fell behind: schedule lateness p99 {p99:.1f} ms (over "
        f"{LATENESS_P99_MS:g} ms), so the client, not only the server, was a bottleneck. "
        "Response times include the delay; add --workers or CPU for a clean measurement."
    )
    by_worker = summary.lateness_by_worker_ms
    late = [
        f"{w} (p99 {st.p99:.1f} ms)"
        for w, st in by_worker.items()
        if st.p99 is not None and st.p99 > LATENESS_P99_MS
    ]
    if len(by_worker) > 1 and late:
        text += f" Late workers: {', '.join(late)} of {len(by_worker)}."
    return text


def overrun_note(results: Results) -> str | None:
    """Why a run took much longer than its --duration: requests in flight were waited for."""
    duration = results.config.load.duration_s
    if duration is None or results.interrupted:
        return None
    took = (results.finished_at - results.started_at).total_seconds()
    if took < duration + max(_OVERRUN_S, duration / 2):
        return None
    late = [r for r in results.requests if r.sent_s + r.e2e_ms / 1000 > duration]
    sessions = {r.session for r in late if r.session is not None}
    last = max((r.sent_s + r.e2e_ms / 1000 for r in late), default=duration)
    what = f"{len(late)} requests still in flight at {duration:g} s"
    if sessions:
        what += f" (turns of {len(sessions)} sessions)"
    return (
        f"the run took {took:.0f} s for a {duration:g} s --duration: nothing is sent after "
        f"{duration:g} s, but {what} were waited for; the last finished at {last:.0f} s. "
        "A slow or overloaded server drains slowly: lower the load, or --timeout to cut "
        "requests off."
    )


def nothing_measured(summary: Summary) -> str | None:
    """A run whose every request was sent in the warm-up or cool-down measured nothing."""
    if summary.requests_completed or summary.requests_failed or not summary.requests_excluded:
        return None
    n, failed = summary.requests_excluded, summary.excluded_failed
    lo, hi = summary.window_s
    return (
        f"nothing was measured: all {n} requests were sent in the warm-up or cool-down "
        f"(outside the window {lo:g}-{hi:g} s), {failed} of them failed. Lower --warmup / "
        "--cooldown, or run longer (--duration) or more requests (--requests)."
    )


def excluded_failures(summary: Summary) -> str | None:
    """Failures among the requests left out (warm-up, cool-down): counted and shown."""
    if not summary.excluded_failed:
        return None
    kinds = ", ".join(f"{k} {n}" for k, n in summary.excluded_errors_by_kind.items())
    return (
        f"{summary.excluded_failed} of the {summary.requests_excluded} requests sent in the "
        f"warm-up or cool-down failed ({kinds}); they are not in the error rate. See them in "
        "results.json (in_window false) or lower --warmup / --cooldown to measure them."
    )


def short_answers(results: Results) -> str | None:
    """One warning for answers that stopped before max_tokens although ignore_eos was asked."""
    short = [r for r in results.requests if r.completed_short]
    if not short:
        return None
    shortest = min(short, key=lambda r: r.output_tokens)
    return (
        f"{len(short)} answers stopped (finish_reason stop) before max_tokens although the "
        f"scenario asked ignore_eos (shortest: {shortest.output_tokens} of "
        f"{shortest.max_tokens} tokens): the server ignores ignore_eos (llama.cpp's does). They "
        "are counted as completed-short, not failed; output lengths and token throughput are "
        "below the scenario's."
    )


def token_source(summary: Summary) -> str | None:
    """Where output token counts came from, when not all from the server's usage."""
    sources = summary.output_tokens_sources
    if not sources or set(sources) == {"usage"}:
        return None
    shown = ", ".join(f"{_SOURCES.get(k, k)} {n}" for k, n in sources.items())
    return f"output tokens counted from: {shown} (the server sent no usage for the others)"


def chunk_count_warning(summary: Summary) -> str | None:
    """A warning when neither usage nor a tokenizer counted the output tokens."""
    n = summary.output_tokens_sources.get("chunks", 0)
    if not n:
        return None
    return (
        f"the server reported no usage for {n} answers and no --tokenizer was given: their "
        "output tokens are counted as text chunks (one token per chunk on most servers, not "
        "all). Give --tokenizer (the target's tokenizer) for exact counts."
    )


def rate_gap(summary: Summary) -> str | None:
    """The window's token rate beside the whole run's when they differ a lot, and why."""
    window, run = summary.output_tokens_per_s, summary.output_tokens_per_s_run
    if not run or summary.run_s is None:
        return None
    if window and max(window, run) < _RATE_GAP * min(window, run):
        return None
    lo, hi = summary.window_s
    tokens = run * summary.run_s
    return (
        f"output throughput {window or 0:.1f} tok/s counts the tokens that arrived inside the "
        f"measurement window ({lo:g}-{hi:g} s); over the whole run {tokens:.0f} tokens "
        f"arrived in {summary.run_s:.0f} s, {run:.1f} tok/s. Latency counts whole requests, "
        "so with a slow server most tokens can arrive after the window: compare the two."
    )


def run_findings(results: Results) -> list[str]:
    """Every warning about how the run went, for the terminal and the report."""
    s = results.summary
    found = list(results.notes)
    for note in (
        nothing_measured(s),
        excluded_failures(s),
        short_answers(results),
        chunk_count_warning(s),
        rate_gap(s),
        lateness_warning(s),
        overrun_note(results),
    ):
        if note is not None:
            found.append(note)
    return found

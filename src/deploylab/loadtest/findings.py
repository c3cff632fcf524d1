"""What a run's numbers mean, in sentences: first error messages of each class, a client that
fell behind its schedule, a run that overran its duration. The terminal summary and the HTML
report print the same findings (SLO explanations are in `explain.py`)."""

from __future__ import annotations

import json

from deploylab.loadtest.results import Results, Summary

LATENESS_P99_MS = 5.0  # a client later than this at p99 measured itself, not only the server
_OVERRUN_S = 10.0  # a run that takes this much (and half its duration) longer says why


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
    return (
        f"the load generator itself fell behind: schedule lateness p99 {p99:.1f} ms (over "
        f"{LATENESS_P99_MS:g} ms), so the client, not only the server, was a bottleneck. "
        "Response times include the delay; add --workers or CPU for a clean measurement."
    )


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


def run_findings(results: Results) -> list[str]:
    """Every warning about how the run went, for the terminal and the report."""
    found = list(results.notes)
    for note in (lateness_warning(results.summary), overrun_note(results)):
        if note is not None:
            found.append(note)
    return found

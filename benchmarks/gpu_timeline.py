"""Where a profiled GPU region loses time: kernel busy time against wall time, and the
largest gaps where the GPU sat idle, with the host operations that ran during each gap.

Reads a `torch.profiler` trace (Chrome JSON); used by `roofline.py --profile`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any


@dataclass
class Gap:
    """An interval with no kernel running, and the host ops that overlapped it."""

    start_us: float
    end_us: float
    host_ops: list[tuple[str, float]]

    @property
    def us(self) -> float:
        return self.end_us - self.start_us


def trace_events(prof: Any) -> list[dict[str, Any]]:
    """The complete ('X') events of a finished profiler run."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            data = json.load(f)
    finally:
        os.unlink(path)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def gpu_gaps(
    events: list[dict[str, Any]], window: tuple[float, float], skip: str | None = None
) -> tuple[float, list[Gap]]:
    """(kernel busy µs inside `window`, idle gaps in it, longest first); host ops named
    `skip` (the region's own annotation) are not listed against the gaps."""
    lo, hi = window
    kernels = sorted(
        (max(lo, float(e["ts"])), min(hi, float(e["ts"]) + float(e["dur"])))
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
        and float(e["ts"]) < hi
        and float(e["ts"]) + float(e["dur"]) > lo
    )
    busy, cursor, idle = 0.0, lo, []
    for s, e in kernels:
        if s > cursor:
            idle.append((cursor, s))
        if e > cursor:
            busy += e - max(s, cursor)
            cursor = e
    if hi > cursor:
        idle.append((cursor, hi))
    host = [
        e
        for e in events
        if e.get("cat") in ("cpu_op", "user_annotation", "python_function")
        and e.get("name") != skip
    ]
    gaps = []
    for s, e in sorted(idle, key=lambda g: g[0] - g[1]):
        ops = [
            (str(o["name"]), float(o["dur"]))
            for o in host
            if float(o["ts"]) < e and float(o["ts"]) + float(o["dur"]) > s
        ]
        ops.sort(key=lambda o: -o[1])
        gaps.append(Gap(s, e, ops[:6]))
    return busy, gaps


def annotation_window(events: list[dict[str, Any]], name: str) -> list[tuple[float, float]]:
    """Start and end µs of every `record_function(name)` region."""
    return sorted(
        (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in events
        if e.get("cat") == "user_annotation" and e.get("name") == name
    )


GAP_BINS_US = (10.0, 50.0, 200.0)


def gap_histogram(gaps: list[Gap]) -> str:
    """Count and total of idle gaps by size: where the idle time sits."""
    edges = (0.0, *GAP_BINS_US, float("inf"))
    parts = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        sel = [g.us for g in gaps if lo <= g.us < hi]
        label = f"<{hi:.0f}us" if hi != float("inf") else f">={lo:.0f}us"
        parts.append(f"{label}: {len(sel)} = {sum(sel) / 1e3:.2f} ms")
    return ", ".join(parts)


def report(prof: Any, region: str, top: int = 8) -> str:
    """Text summary of the GPU's busy share and idle gaps inside each `region` annotation."""
    events = trace_events(prof)
    lines = []
    for i, window in enumerate(annotation_window(events, region)):
        wall = window[1] - window[0]
        busy, gaps = gpu_gaps(events, window, skip=region)
        lines.append(
            f"{region} #{i}: wall {wall / 1e3:.2f} ms, GPU busy {busy / 1e3:.2f} ms "
            f"({100 * busy / wall:.0f}%), idle {(wall - busy) / 1e3:.2f} ms in {len(gaps)} gaps"
            f" ({gap_histogram(gaps)})"
        )
        for g in gaps[:top]:
            where = f"+{(g.start_us - window[0]) / 1e3:.2f} ms"
            ops = ", ".join(f"{n} {d:.0f}us" for n, d in g.host_ops)
            lines.append(f"  gap {g.us:8.0f} us at {where:>10}: {ops}")
    return "\n".join(lines)

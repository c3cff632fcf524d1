"""`benchmarks/gpu_timeline.py`: busy time and idle gaps of a GPU region from trace events
(synthetic Chrome-trace events; the profiler itself needs a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gpu_timeline import annotation_window, gap_histogram, gpu_gaps  # noqa: E402


def kernel(ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": "k", "ts": ts, "dur": dur}


def host(name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur}


def test_busy_time_and_gaps_with_the_host_ops_that_ran_during_them() -> None:
    events = [
        {"ph": "X", "cat": "user_annotation", "name": "prefill", "ts": 0.0, "dur": 1000.0},
        kernel(100, 200), kernel(250, 100),  # overlapping kernels count once
        kernel(400, 100), kernel(900, 200),  # the last one runs past the window
        host("prepare", 0, 90), host("tiny", 360, 5), host("sample", 600, 250),
    ]  # fmt: skip
    (window,) = annotation_window(events, "prefill")
    busy, gaps = gpu_gaps(events, window, skip="prefill")
    assert busy == 250 + 100 + 100
    assert [(g.start_us, g.end_us) for g in gaps] == [(500, 900), (0, 100), (350, 400)]
    assert gaps[0].host_ops == [("sample", 250.0)]
    assert gaps[1].host_ops == [("prepare", 90.0)]
    assert (
        gap_histogram(gaps)
        == "<10us: 0 = 0.00 ms, <50us: 0 = 0.00 ms, <200us: 2 = 0.15 ms, >=200us: 1 = 0.40 ms"
    )

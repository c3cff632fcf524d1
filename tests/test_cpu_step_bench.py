"""benchmarks/cpu_step.py's parts: the forward timer and the per-step own-time table, on a
tiny random model's real engine."""

from __future__ import annotations

import cProfile
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cpu_step import decode_steps, head_kernels, own_time, timed_forward  # noqa: E402


def test_steps_forwards_and_own_time_of_a_real_engine() -> None:
    from deploylab.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(random_weights="tiny", device="cpu", max_num_seqs=1))
    forward: list[float] = []
    timed_forward(engine.runner, forward)
    profiler = cProfile.Profile()
    profiler.enable()
    steps = decode_steps(engine, [5, 6, 7, 8], 6, forward)
    profiler.disable()
    assert len(steps) == 6 and len(forward) == 6  # one forward per decode step, prefill apart
    assert all(f <= s for f, s in zip(forward, steps, strict=True))  # the forward is inside
    prof = own_time(profiler, 3, len(steps))
    assert len(prof["top"]) == 3 and prof["calls_per_step"] > 0
    assert all(".py:" in w for _, _, w in prof["top"])  # "file.py:line function"
    assert prof["own_ms_per_step"] >= sum(ms for ms, _, _ in prof["top"]) - 1e-6


def test_head_kernels_times_each_form() -> None:
    times = head_kernels(rows=256, cols=64)
    assert set(times) == {"int8", "int4", "bfloat16"} and all(t > 0 for t in times.values())

"""Segments and the diagonal schedule."""

from __future__ import annotations

import pytest

from deploylab.armt.schedule import diagonal_schedule, render_schedule, split_segments
from deploylab.errors import UsageError


def test_split_segments_left_aligned_last_shorter() -> None:
    assert split_segments(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_segments(8, 4) == [(0, 4), (4, 8)]
    assert split_segments(3, 4) == [(0, 3)]
    with pytest.raises(UsageError, match="empty"):
        split_segments(0, 4)


@pytest.mark.parametrize(("layers", "segments"), [(1, 1), (4, 1), (1, 5), (4, 6), (5, 2)])
def test_schedule_runs_every_pair_once_after_its_dependencies(layers: int, segments: int) -> None:
    steps = diagonal_schedule(layers, segments)
    assert len(steps) == layers + segments - 1
    when: dict[tuple[int, int], int] = {}
    for step in steps:
        for pair in step.pairs():
            assert pair not in when
            when[pair] = step.index
    assert set(when) == {(lay, s) for lay in range(layers) for s in range(segments)}
    for (lay, s), t in when.items():
        if lay > 0:
            assert when[(lay - 1, s)] < t  # hidden states from the layer below
        if s > 0:
            assert when[(lay, s - 1)] < t  # memory from the previous segment


def test_ramp_up_and_drain_sizes() -> None:
    assert [s.size for s in diagonal_schedule(4, 6)] == [1, 2, 3, 4, 4, 4, 3, 2, 1]
    assert [s.size for s in diagonal_schedule(4, 2)] == [1, 2, 2, 2, 1]
    step = diagonal_schedule(4, 6)[7]
    assert (step.first_layer, step.last_layer) == (2, 3)
    assert step.pairs() == [(2, 5), (3, 4)]


def test_render_schedule_grid() -> None:
    text = render_schedule(3, 4)
    lines = text.splitlines()
    assert lines[2] == "| L2 | 2 | 3 | 4 | 5 |"
    assert lines[4] == "| L0 | 0 | 1 | 2 | 3 |"
    assert "6 grouped steps instead of 12 layer calls" in text
    with pytest.raises(UsageError):
        render_schedule(0, 3)

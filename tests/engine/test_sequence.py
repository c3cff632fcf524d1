"""`Sequence.input_ids`: packed token ids for a step, from the prompt or past it."""

from __future__ import annotations

from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.sequence import Sequence


def test_input_ids_inside_and_past_the_prompt() -> None:
    seq = Sequence("r", [5, 6, 7, 8], SamplingParams(), 0)
    assert list(seq.input_ids(1, 4)) == [6, 7, 8]
    seq.token_ids += [9, 10]  # generated tokens (e.g. recomputed after a preemption)
    assert list(seq.input_ids(2, 6)) == [7, 8, 9, 10]
    assert seq.input_ids(0, 2).typecode == "q"

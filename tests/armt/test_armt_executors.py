"""Diagonal batching gives the sequential executor's logits and memories."""

from __future__ import annotations

import pytest
import torch

from deploylab.armt.config import ARMTConfig
from deploylab.armt.diagonal import run_diagonal
from deploylab.armt.grouped import BACKENDS
from deploylab.armt.model import ARMTModel, random_armt
from deploylab.armt.sequential import run_sequential
from deploylab.errors import UsageError

from .conftest import SEGMENT, TINY, TINY_ARMT

N_LAYERS = TINY.num_hidden_layers
CASES = {
    "1 segment": SEGMENT,
    "1 short segment": 5,
    "2 segments": 2 * SEGMENT,
    "n_layers segments": N_LAYERS * SEGMENT,
    "3 x n_layers segments": 3 * N_LAYERS * SEGMENT,
    "short last of 3 x n_layers": 3 * N_LAYERS * SEGMENT - 5,
    "short last of 2": SEGMENT + 1,
}
_BACKENDS = [b for b in BACKENDS if b == "bmm" or hasattr(torch, "_grouped_mm")]


def _ids(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (batch, n), generator=gen)


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_diagonal_equals_sequential(tiny_armt: ARMTModel, case: str, backend: str) -> None:
    n = CASES[case]
    ids = _ids(n)
    seq = run_sequential(tiny_armt, ids)
    diag = run_diagonal(tiny_armt, ids, backend=backend)
    n_seg = -(-n // SEGMENT)
    assert seq.num_segments == diag.num_segments == n_seg
    assert seq.num_steps == N_LAYERS * n_seg
    assert diag.num_steps == N_LAYERS + n_seg - 1
    assert seq.hidden is not None and diag.hidden is not None
    assert seq.hidden.shape == (2, n, TINY.hidden_size)
    torch.testing.assert_close(
        tiny_armt.compute_logits(diag.hidden),
        tiny_armt.compute_logits(seq.hidden),
        rtol=1e-4,
        atol=1e-4,
    )
    torch.testing.assert_close(diag.memory.w_mem, seq.memory.w_mem, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(diag.memory.z, seq.memory.z, rtol=1e-4, atol=1e-4)
    assert float(seq.memory.w_mem.abs().max()) > 0.1  # the memory path really ran
    torch.testing.assert_close(diag.last_hidden, seq.hidden[:, -1])


def test_w_mv_is_random_so_memory_is_exercised(tiny_armt: ARMTModel) -> None:
    d_mem, d = TINY_ARMT.d_mem, TINY.hidden_size
    assert float(tiny_armt.memory.w_write[:, d_mem : d_mem + d].abs().max()) > 0


def test_memory_carries_information_across_segments(tiny_armt: ARMTModel) -> None:
    ids = _ids(2 * SEGMENT)
    both = run_diagonal(tiny_armt, ids)
    second_alone = run_diagonal(tiny_armt, ids[:, SEGMENT:])
    assert both.hidden is not None and second_alone.hidden is not None
    first = both.hidden[:, :SEGMENT]
    alone_first = run_diagonal(tiny_armt, ids[:, :SEGMENT]).hidden
    torch.testing.assert_close(first, alone_first)  # nothing to read in segment 0
    gap = (both.hidden[:, SEGMENT:] - second_alone.hidden).abs().max()
    assert float(gap) > 1e-2  # segment 1 reads what segment 0 wrote


def test_keep_hidden_false_keeps_only_the_last_token(tiny_armt: ARMTModel) -> None:
    ids = _ids(3 * SEGMENT + 2, batch=1)
    full = run_diagonal(tiny_armt, ids)
    lean = run_diagonal(tiny_armt, ids, keep_hidden=False)
    lean_seq = run_sequential(tiny_armt, ids, keep_hidden=False)
    assert lean.hidden is None and lean_seq.hidden is None
    torch.testing.assert_close(lean.last_hidden, full.last_hidden)
    torch.testing.assert_close(lean_seq.last_hidden, full.last_hidden, rtol=1e-4, atol=1e-4)


def test_with_zero_w_mv_each_segment_is_the_base_model_on_that_segment() -> None:
    """The paper's initialisation writes nothing, so every segment sees only its own tokens:
    ARMT logits equal the engine's Llama on each segment alone (positions from 0)."""
    cfg = ARMTConfig(segment_size=SEGMENT, num_mem_tokens=4, d_mem=8)
    model = random_armt(TINY, cfg, seed=3)
    ids = _ids(2 * SEGMENT + 3, batch=1)
    out = run_diagonal(model, ids)
    assert out.hidden is not None
    for start in range(0, ids.shape[1], SEGMENT):
        seg = ids[:, start : start + SEGMENT]
        with torch.inference_mode():
            ref = model.base(seg, torch.arange(seg.shape[1]).unsqueeze(0))
        torch.testing.assert_close(
            out.hidden[:, start : start + seg.shape[1]], ref, rtol=1e-4, atol=1e-4
        )


def test_bad_inputs_are_usage_errors(tiny_armt: ARMTModel) -> None:
    with pytest.raises(UsageError, match="at least one token"):
        run_diagonal(tiny_armt, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(UsageError, match=r"\[0, 512\)"):
        run_sequential(tiny_armt, torch.tensor([[1, 512]]))
    with pytest.raises(UsageError, match="integer"):
        run_diagonal(tiny_armt, torch.zeros(1, 4))
    with pytest.raises(UsageError, match="backend"):
        run_diagonal(tiny_armt, _ids(4), backend="cutlass")

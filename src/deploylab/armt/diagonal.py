"""The diagonal-batching ARMT executor: one grouped step per anti-diagonal l + s = d.

Hidden states live in one buffer `[L + 1, B, T, D]`: slot l holds the input of layer l, slot
L the output of the last layer. Step d reads slots l0..l1 (a view, no gather), runs the grouped
read → decoder layers → write on them, and stores the outputs in slots l0+1..l1+1, where the
next step finds them as its inputs: layer l's output on segment s is layer l+1's input on
segment s at step d+1. Layer 0's slot is refilled from the next segment's embeddings.

Ramp-up (d < L−1) and drain (d > S−1) are the steps with fewer than L layers. A last segment
shorter than the others is padded at the end, after its memory tokens: attention is causal, so
its real rows never see the padding, and its memory rows are taken at their real offset.
Memory reads of a layer still on its first segment see W_mem = 0, z = 0 and add exactly 0,
the same as the sequential executor's skipped read.
"""

from __future__ import annotations

import torch

from deploylab.armt.grouped import (
    GroupedBackend,
    check_backend,
    grouped_decoder_layers,
    grouped_linear,
)
from deploylab.armt.memory import MemoryState
from deploylab.armt.memory_io import read_memory, write_memory
from deploylab.armt.model import ARMTModel
from deploylab.armt.output import ARMTOutput, check_input_ids
from deploylab.armt.schedule import DiagonalStep, diagonal_schedule, split_segments


@torch.inference_mode()
def run_diagonal(
    model: ARMTModel,
    input_ids: torch.Tensor,
    keep_hidden: bool = True,
    backend: str = "bmm",
) -> ARMTOutput:
    """Run `input_ids` `[B, N]` through the ARMT by anti-diagonals (same results as
    `run_sequential`, up to float rounding)."""
    gemm = check_backend(backend)
    cfg = model.config
    llama = model.llama_config
    input_ids = check_input_ids(input_ids, llama.vocab_size).to(model.device)
    batch = input_ids.shape[0]
    segments = split_segments(input_ids.shape[1], cfg.segment_size)
    seg_lens = [end - start for start, end in segments]
    n_layers = len(model.layers)
    m_tok, d_model = cfg.num_mem_tokens, llama.hidden_size
    width = seg_lens[0] + m_tok
    buf = torch.zeros(n_layers + 1, batch, width, d_model, dtype=model.dtype, device=model.device)
    state = MemoryState.zeros(n_layers, batch, cfg.d_key, d_model, model.device)
    cos, sin = model.rotary(width)
    outputs: list[torch.Tensor] = []
    last = torch.empty(0)
    steps = diagonal_schedule(n_layers, len(segments))
    for step in steps:
        sl = slice(step.first_layer, step.last_layer + 1)
        if step.first_layer == 0:
            start, end = segments[step.index]
            emb = model.segment_inputs(input_ids[:, start:end])
            buf[0, :, : emb.shape[1]] = emb
            buf[0, :, emb.shape[1] :] = 0.0
        out = _grouped_step(model, buf[sl], step, seg_lens, state, cos, sin, gemm)
        buf[step.first_layer + 1 : step.last_layer + 2] = out
        if step.last_layer == n_layers - 1:
            n = seg_lens[step.segment_of(n_layers - 1)]
            hidden = model.base.model.norm(buf[n_layers, :, :n])
            last = hidden[:, -1]
            if keep_hidden:
                outputs.append(hidden)
    return ARMTOutput(
        last_hidden=last,
        memory=state,
        num_segments=len(segments),
        num_steps=len(steps),
        hidden=torch.cat(outputs, dim=1) if keep_hidden else None,
    )


def _grouped_step(
    model: ARMTModel,
    x: torch.Tensor,
    step: DiagonalStep,
    seg_lens: list[int],
    state: MemoryState,
    cos: torch.Tensor,
    sin: torch.Tensor,
    gemm: GroupedBackend,
) -> torch.Tensor:
    """Read, decoder layers and write for the G pairs of `step`; x `[G, B, T, D]`."""
    mem = model.memory
    sl = slice(step.first_layer, step.last_layer + 1)
    g, b, t, d = x.shape
    q_proj = grouped_linear(x.reshape(g, b * t, d), mem.w_mq[sl], None, gemm)
    x = read_memory(x, q_proj.view(g, b, t, -1), state, sl, model)
    out = grouped_decoder_layers(model, x, sl, cos, sin, gemm)
    m_rows = _memory_rows(out, step, seg_lens, model.config.num_mem_tokens)
    proj = grouped_linear(m_rows.reshape(g, -1, d), mem.w_write[sl], mem.b_write[sl], gemm)
    write_memory(proj.view(g, b, m_rows.shape[2], -1), state, sl, model)
    return out


def _memory_rows(
    out: torch.Tensor, step: DiagonalStep, seg_lens: list[int], m_tok: int
) -> torch.Tensor:
    """The memory-token rows `[G, B, M, D]` of each pair's output (right after its tokens)."""
    offsets = [
        seg_lens[step.segment_of(layer)] for layer in range(step.first_layer, step.last_layer + 1)
    ]
    if all(o == offsets[0] for o in offsets):
        return out[:, :, offsets[0] : offsets[0] + m_tok]
    return torch.stack([out[i, :, o : o + m_tok] for i, o in enumerate(offsets)])

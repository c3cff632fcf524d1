"""The sequential ARMT executor: segment by segment, layer by layer (the reference order).

Each (layer, segment) pair is one call of the engine's `LlamaDecoderLayer` on `[B, n + M, D]`
hidden states, wrapped by the memory read before it and the memory write after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deploylab.armt.memory import MemoryState
from deploylab.armt.memory_io import read_memory, write_memory
from deploylab.armt.model import ARMTModel
from deploylab.armt.output import ARMTOutput, check_input_ids
from deploylab.armt.schedule import split_segments


@torch.inference_mode()
def run_sequential(
    model: ARMTModel, input_ids: torch.Tensor, keep_hidden: bool = True
) -> ARMTOutput:
    """Run `input_ids` `[B, N]` through the ARMT one (layer, segment) pair at a time."""
    cfg = model.config
    llama = model.llama_config
    input_ids = check_input_ids(input_ids, llama.vocab_size).to(model.device)
    batch = input_ids.shape[0]
    segments = split_segments(input_ids.shape[1], cfg.segment_size)
    layers = model.layers
    mem = model.memory
    state = MemoryState.zeros(len(layers), batch, cfg.d_key, llama.hidden_size, model.device)
    m_tok = cfg.num_mem_tokens
    cos_all, sin_all = model.rotary(segments[0][1] - segments[0][0] + m_tok)
    outputs: list[torch.Tensor] = []
    last = torch.empty(0)
    for seg_idx, (start, end) in enumerate(segments):
        x = model.segment_inputs(input_ids[:, start:end])
        length = x.shape[1]
        cos, sin = cos_all[:length], sin_all[:length]
        for lay, layer in enumerate(layers):
            if seg_idx > 0:  # the first segment has nothing to read
                x = read_memory(x, F.linear(x, mem.w_mq[lay]), state, lay, model)
            x = layer(x, cos, sin)
            proj = F.linear(x[:, -m_tok:], mem.w_write[lay], mem.b_write[lay])
            write_memory(proj, state, lay, model)
        hidden = model.base.model.norm(x[:, : end - start])
        last = hidden[:, -1]
        if keep_hidden:
            outputs.append(hidden)
    return ARMTOutput(
        last_hidden=last,
        memory=state,
        num_segments=len(segments),
        num_steps=len(segments) * len(layers),
        hidden=torch.cat(outputs, dim=1) if keep_hidden else None,
    )

"""Tensor-parallel modules and the sharding of a loaded model (gpt-fast / Megatron style).

q/k/v and gate/up are column-parallel: each rank keeps its heads' (its columns') rows of the
weight, so their outputs are local. o and down are row-parallel: each rank multiplies its
slice of the input dimension and one all-reduce sums the partial outputs. The embedding and
the LM head are vocabulary-parallel. The model code (`engine/models/`) does not know: this
module swaps its linear layers from outside and passes the communication in.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from deploylab.engine.distributed.plan import ShardPlan
from deploylab.engine.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP


class Communicator(Protocol):
    """The collectives the parallel layers need (torch.distributed underneath)."""

    def all_reduce(self, t: torch.Tensor) -> None:
        """Sum `t` over the ranks, in place."""

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """`[world, *t.shape]`: every rank's `t`, stacked in rank order."""


class RowParallelLinear(nn.Module):
    """A linear layer over this rank's slice of the input features, then one all-reduce;
    the bias is added once, after the sum."""

    def __init__(self, linear: nn.Linear, bias: torch.Tensor | None, comm: Communicator) -> None:
        super().__init__()
        self.linear = linear  # a plain nn.Linear without bias (the CPU path prepacks it)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.comm = comm

    @property
    def weight(self) -> torch.Tensor:
        """This rank's weight slice `[out, in_local]`."""
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        self.comm.all_reduce(y)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding rows `[start, end)` of the vocabulary; other ids give zeros, and one
    all-reduce assembles every token's row."""

    def __init__(self, weight: torch.Tensor, start: int, comm: Communicator) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.start = start
        self.comm = comm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.weight.shape[0]
        local = ids - self.start
        inside = (local >= 0) & (local < n)
        out = F.embedding(local.clamp(0, n - 1), self.weight)
        out = out * inside.unsqueeze(-1).to(out.dtype)
        self.comm.all_reduce(out)
        return out


class VocabParallelLMHead(nn.Module):
    """The LM head over this rank's vocabulary rows; an all-gather assembles full logits."""

    def __init__(
        self, weight: nn.Parameter, vocab_size: int, shard: int, comm: Communicator
    ) -> None:
        super().__init__()
        self.weight = weight  # may be the embedding's parameter (tied)
        self.vocab_size = vocab_size
        self.shard = shard
        self.comm = comm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        lead = hidden.shape[:-1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        local = F.linear(flat, self.weight)
        if local.shape[1] < self.shard:  # the last ranks' shorter slices
            local = F.pad(local, (0, self.shard - local.shape[1]))
        parts = self.comm.all_gather(local.contiguous())  # [world, T, shard]
        logits = parts.permute(1, 0, 2).reshape(flat.shape[0], -1)[:, : self.vocab_size]
        return logits.reshape(*lead, self.vocab_size)


def _rows(t: torch.Tensor, start: int, end: int) -> torch.Tensor:
    return t[start:end].clone()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear around existing tensors (built on the meta device: no init, no copy)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def _slice_attention(attn: LlamaAttention, plan: ShardPlan) -> None:
    d = attn.head_dim
    (q0, q1), (k0, k1) = plan.q_heads, plan.kv_heads
    for name, (a, b) in (("q_proj", (q0, q1)), ("k_proj", (k0, k1)), ("v_proj", (k0, k1))):
        old: nn.Linear = getattr(attn, name)
        bias = None if old.bias is None else _rows(old.bias.detach(), a * d, b * d)
        setattr(attn, name, _linear(_rows(old.weight.detach(), a * d, b * d), bias))
    o = attn.o_proj
    weight = o.weight.detach()[:, q0 * d : q1 * d].contiguous()
    attn.o_proj = _linear(weight, None if o.bias is None else o.bias.detach())
    attn.num_heads, attn.num_kv_heads = q1 - q0, k1 - k0


def _slice_mlp(mlp: LlamaMLP, plan: ShardPlan) -> None:
    i0, i1 = plan.intermediate
    for name in ("gate_proj", "up_proj"):
        old: nn.Linear = getattr(mlp, name)
        bias = None if old.bias is None else _rows(old.bias.detach(), i0, i1)
        setattr(mlp, name, _linear(_rows(old.weight.detach(), i0, i1), bias))
    down = mlp.down_proj
    weight = down.weight.detach()[:, i0:i1].contiguous()
    mlp.down_proj = _linear(weight, None if down.bias is None else down.bias.detach())


def _row_parallel(layer: nn.Linear, comm: Communicator) -> RowParallelLinear:
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return RowParallelLinear(_linear(layer.weight.detach(), None), bias, comm)


def shard_model(model: LlamaForCausalLM, plan: ShardPlan, comm: Communicator) -> LlamaForCausalLM:
    """Cut a full model down to `plan`'s heads and MLP columns in place, then `parallelize`."""
    if model.model.fused:
        raise ValueError("shard the model before fusing its projections")
    for layer in model.model.layers:
        _slice_attention(layer.self_attn, plan)  # type: ignore[arg-type]
        _slice_mlp(layer.mlp, plan)  # type: ignore[arg-type]
    model.config = model.model.config = plan.local_config(model.config)
    return parallelize(model, plan, comm)


def parallelize(model: LlamaForCausalLM, plan: ShardPlan, comm: Communicator) -> LlamaForCausalLM:
    """Wire a model whose layers already have this rank's shapes (`plan.local_config`) to
    `comm`: o/down become row-parallel, the embedding and LM head vocabulary-parallel."""
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.o_proj = _row_parallel(attn.o_proj, comm)  # type: ignore[union-attr,arg-type,assignment]
        mlp.down_proj = _row_parallel(mlp.down_proj, comm)  # type: ignore[union-attr,arg-type,assignment]
    full_vocab = model.config.vocab_size
    v0, v1 = plan.vocab
    embed = VocabParallelEmbedding(
        _rows(model.model.embed_tokens.weight.detach(), v0, v1), v0, comm
    )
    head: nn.Parameter = embed.weight
    if not model.config.tie_word_embeddings:
        head = nn.Parameter(_rows(model.lm_head.weight.detach(), v0, v1), requires_grad=False)
    model.model.embed_tokens = embed  # type: ignore[assignment]
    model.lm_head = VocabParallelLMHead(head, full_vocab, plan.vocab_shard, comm)  # type: ignore[assignment]
    return model

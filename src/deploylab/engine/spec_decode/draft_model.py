"""The draft-model proposer: a smaller model with the target's tokenizer drafts greedily, with
its own paged KV cache, block manager and model runner inside the same engine.

Every decoding sequence has a shadow sequence in the draft's cache. Each step the shadow is
synced with the target's tokens (its computed tokens past the first disagreement — rejected
drafts — are rolled back and their blocks trimmed), catches up on the tokens it has not seen
(the prompt, the target's last token) in one batched pass, then decodes k − 1 more tokens one
batched pass each. Shadows of finished sequences are freed. With `tree_width` W > 1
(`propose_tree`) the first pass's top-W tokens are the tree's root children and only the best
one's chain is decoded further and read by the shadow; when the target keeps another child,
its token differs from the shadow's at that position, so `_sync` rolls the chain back there.

The draft is either another model file (`draft_model`: a catalog name or path; same
vocabulary) or, as the default model has no smaller sibling here, the target's first
`draft_layers` decoder layers with its final norm and LM head — a layer-truncated model
that shares the target's weights (no extra weight memory; docs/speculative.md).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

import torch
from torch import nn

from deploylab.engine.block_manager import BlockManager
from deploylab.engine.kv_cache import KVCache
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.errors import ConfigError

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner

_GREEDY = SamplingParams(temperature=0)


def truncated_model(target: LlamaForCausalLM, num_layers: int) -> LlamaForCausalLM:
    """The target's first `num_layers` layers + final norm + LM head (weights shared)."""
    total = target.config.num_hidden_layers
    if not 1 <= num_layers < total:
        raise ConfigError(
            f"speculative_config.draft_layers must be in [1, {total - 1}] (the target has "
            f"{total} layers), got {num_layers}."
        )
    config = target.config.with_updates(num_hidden_layers=num_layers)
    with torch.device("meta"):
        draft = LlamaForCausalLM(config)
    inner = draft.model
    inner.embed_tokens = target.model.embed_tokens
    inner.layers = nn.ModuleList(list(target.model.layers)[:num_layers])
    inner.norm = target.model.norm
    inner.rotary_emb = target.model.rotary_emb
    draft.lm_head = target.lm_head
    return draft


def load_draft(name: str, target: LlamaForCausalLM, device: torch.device) -> LlamaForCausalLM:
    """A separate draft model file (catalog name or path) with the target's vocabulary."""
    from deploylab.catalog import resolve_model
    from deploylab.engine.models.loader import load_model

    dtype = next(target.parameters()).dtype
    model, _ = load_model(resolve_model(name), dtype, device)
    if model.config.vocab_size != target.config.vocab_size:
        raise ConfigError(
            f"draft model {name!r} has vocabulary size {model.config.vocab_size}, the target "
            f"{target.config.vocab_size}: a draft model must share the target's tokenizer."
        )
    return model


class _Shadow:
    """A sequence's twin in the draft cache (`synced`: tokens known equal to the target's)."""

    def __init__(self, seq: Sequence) -> None:
        self.target = seq
        self.seq = Sequence(f"draft:{seq.request_id}", list(seq.token_ids), _GREEDY, 0)
        self.synced = 0


class DraftModelProposer:
    """Greedy drafts from a smaller model over its own paged KV cache."""

    free_to_propose = False

    def __init__(self, draft: LlamaForCausalLM, runner: ModelRunner, num_blocks: int) -> None:
        from deploylab.engine.model_runner import ModelRunner

        dtype = next(runner.model.parameters()).dtype
        bs = runner.block_size
        self.kv = KVCache(draft.config, num_blocks, bs, dtype, runner.device)
        self.blocks = BlockManager(num_blocks, bs, enable_prefix_caching=False)
        self.runner = ModelRunner(draft, self.kv, runner.device)
        self.shadows: dict[tuple[str, int], _Shadow] = {}

    def _free_finished(self) -> None:
        for key in [k for k, s in self.shadows.items() if s.target.is_finished]:
            self.blocks.free(self.shadows.pop(key).seq)

    def _sync(self, seq: Sequence, k: int) -> _Shadow | None:
        """The shadow with its computed tokens cut at the first disagreement and blocks for
        the catch-up plus k − 1 drafts; None when the draft cache has no room."""
        key = (seq.request_id, seq.index)
        shadow = self.shadows.get(key) or self.shadows.setdefault(key, _Shadow(seq))
        d = shadow.seq
        c = d.num_computed_tokens
        for i in range(shadow.synced, d.num_computed_tokens):
            if i >= seq.num_tokens or d.token_ids[i] != seq.token_ids[i]:
                c = i
                break
        d.token_ids = list(seq.token_ids)
        d.num_computed_tokens = min(c, seq.num_tokens - 1)  # one token left to read logits
        self.blocks.trim(d)
        need = d.num_tokens - d.num_computed_tokens + k - 1
        if not self.blocks.allocate(d, need):
            self.blocks.free(d)
            d.num_computed_tokens = 0
            del self.shadows[key]
            return None
        return shadow

    @torch.inference_mode()
    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[list[int]]:
        """Up to ks[i] greedy draft tokens per sequence, batched per draft position."""
        return self._draft(seqs, ks, 1)[0]

    @torch.inference_mode()
    def propose_tree(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> list[tuple[list[int], list[int]]]:
        """Per sequence a tree of at most ks[i] nodes: the draft's top-`width` first tokens as
        root children, the most likely one continued greedily as deep as the budget allows
        after one node for each other child: (tokens, parents), chain first, then siblings."""
        siblings = [min(width - 1, k - 1) if k > 0 else 0 for k in ks]
        deep = [k - n for k, n in zip(ks, siblings, strict=True)]
        chains, firsts = self._draft(seqs, deep, width)
        out: list[tuple[list[int], list[int]]] = []
        for chain, top, n in zip(chains, firsts, siblings, strict=True):
            if not chain:
                out.append(([], []))
                continue
            extra = [t for t in top if t != chain[0]][:n]  # distinct from the chain's root
            out.append((chain + extra, [-1, *range(len(chain) - 1)] + [-1] * len(extra)))
        return out

    def _draft(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Up to ks[i] greedy drafts per sequence (its shadow reads them), one batched draft
        pass per position, and with `width` > 1 each sequence's top-`width` first tokens
        (empty where it drafts nothing)."""
        self._free_finished()
        active: list[tuple[int, _Shadow]] = []
        for i, (seq, k) in enumerate(zip(seqs, ks, strict=True)):
            shadow = self._sync(seq, k) if k > 0 else None
            if shadow is not None:
                active.append((i, shadow))
        out: list[list[int]] = [[] for _ in seqs]
        firsts: list[list[int]] = [[] for _ in seqs]
        for depth in range(max((ks[i] for i, _ in active), default=0)):
            step = [(i, s) for i, s in active if depth < ks[i]]
            batch = SchedulerOutput()
            for _, s in step:
                new = s.seq.num_tokens - s.seq.num_computed_tokens
                batch.scheduled.append(ScheduledSeq(s.seq, new))
            _, logits = self.runner.execute(batch)
            assert logits is not None
            if depth == 0 and width > 1:  # the root's candidates (the siblings read no KV)
                top = logits.topk(min(width, logits.shape[-1]), dim=-1).indices.tolist()
                for (i, _), row in zip(step, top, strict=True):
                    firsts[i] = row
            tokens = logits.argmax(dim=-1).tolist()
            for item, (i, s), token in zip(batch.scheduled, step, tokens, strict=True):
                s.seq.num_computed_tokens += item.num_new_tokens
                s.seq.token_ids.append(token)  # the shadow holds the chain only
                out[i].append(token)
        for seq, (_, s) in zip((seqs[i] for i, _ in active), active, strict=True):
            s.synced = seq.num_tokens
        return out, firsts

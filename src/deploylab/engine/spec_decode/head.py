"""The learned draft head (EAGLE-style, MLP only) and its proposer.

`DraftHead` maps (h_t, embed(x_{t+1})) — the target's last hidden state at position t and the
token the target emitted from it — to a guess of h_{t+1}; the target's own (frozen) LM head,
restricted to the head's draft vocabulary (the most frequent tokens of the training
generations), turns the guess into the draft token x_{t+2}. Feeding (guess, draft) back in
gives x_{t+3}, and so on: one small head drafts any depth. No attention, so no KV cache of
its own. Trained by `train_head.py`; saved as safetensors with its shapes in the metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from deploylab.engine.sequence import Sequence
from deploylab.errors import ConfigError

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner

HEADS_DIR = Path(__file__).parent / "heads"


class DraftHead(nn.Module):
    """fc([h; e]) then one residual SiLU MLP block: a guess of the next hidden state."""

    def __init__(self, hidden: int, draft_vocab: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc = nn.Linear(2 * hidden, hidden)
        self.up = nn.Linear(hidden, hidden)
        self.down = nn.Linear(hidden, hidden)
        self.draft_vocab: torch.Tensor
        self.register_buffer("draft_vocab", draft_vocab.to(torch.int64), persistent=True)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Next-hidden-state guesses for rows of (hidden state, token embedding)."""
        f = self.fc(torch.cat([h, e], dim=-1))
        return f + self.down(nn.functional.silu(self.up(f)))

    def save(self, path: str | Path, meta: dict[str, str] | None = None) -> None:
        """Half-precision safetensors with the shapes (and any `meta`) in the metadata."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        info = {"hidden": str(self.hidden), **(meta or {})}
        save_file(tensors, str(path), metadata=info)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> DraftHead:
        """A head saved by `save` (weights cast to `dtype`)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        head = cls(int(meta["hidden"]), tensors["draft_vocab"])
        head.load_state_dict(tensors)
        head.meta = meta  # type: ignore[assignment]
        return head.to(dtype)


def default_head_path(model_name: str) -> Path:
    """Where the shipped head of a catalog model lives."""
    return HEADS_DIR / f"{model_name}.safetensors"


def load_head_for(path: str | Path, runner: ModelRunner) -> DraftHead:
    """Load a head and check it fits the runner's model (hidden size, vocabulary)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"speculative_config.head_path {str(p)!r} does not exist; train a head with "
            "`make spec-head` (or python -m deploylab.engine.spec_decode.train_head)."
        )
    config = runner.model.config
    dtype = next(runner.model.parameters()).dtype
    head: DraftHead = DraftHead.load(p, dtype).to(runner.device)
    vocab = int(head.draft_vocab.max()) + 1
    if head.hidden != config.hidden_size or vocab > config.vocab_size:
        raise ConfigError(
            f"draft head {str(p)!r} was trained for hidden size {head.hidden} (vocabulary ≥ "
            f"{vocab}); the served model has {config.hidden_size} ({config.vocab_size}). "
            "Train a head for this model."
        )
    return head


class HeadProposer:
    """Drafts with a `DraftHead` from each sequence's last hidden state (the model runner
    keeps the sampled rows' hidden states; `observe` stores one per sequence)."""

    free_to_propose = False

    def __init__(self, head: DraftHead, runner: ModelRunner) -> None:
        self.head = head
        self.model = runner.model
        runner.keep_hidden = True
        # seq key -> (position of the token this hidden state predicted, hidden state)
        self.states: dict[tuple[str, int], tuple[int, torch.Tensor]] = {}
        self._vocab_weight = self.model.lm_head.weight.index_select(0, head.draft_vocab)

    def observe(self, seqs: Seq[Sequence], positions: Seq[int], hidden: torch.Tensor) -> None:
        """Row i of `hidden` predicted the token at `positions[i]` of `seqs[i]`."""
        for seq, pos, row in zip(seqs, positions, hidden, strict=True):
            self.states[(seq.request_id, seq.index)] = (pos, row)
        if len(self.states) > 4 * max(len(seqs), 64):  # drop finished sequences' states
            keep = {(s.request_id, s.index) for s in seqs}
            self.states = {k: v for k, v in self.states.items() if k in keep}

    def _ready(
        self, seqs: Seq[Sequence], ks: Seq[int]
    ) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
        """Sequences that can draft (a hidden state for their last token, k > 0): their
        indices, hidden states and last tokens; None when there is none."""
        rows, hs, toks = [], [], []
        for i, (seq, k) in enumerate(zip(seqs, ks, strict=True)):
            state = self.states.get((seq.request_id, seq.index))
            if k > 0 and state is not None and state[0] == seq.num_tokens - 1:
                rows.append(i)
                hs.append(state[1])
                toks.append(seq.token_ids[-1])
        if not rows:
            return None
        h = torch.stack(hs)
        return rows, h, torch.tensor(toks, dtype=torch.int64, device=h.device)

    def _step(self, h: torch.Tensor, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One head step: the next hidden-state guesses and their draft-vocabulary logits."""
        h = self.head(h, self.model.model.embed_tokens(tok))
        return h, h @ self._vocab_weight.T

    @torch.inference_mode()
    def propose(self, seqs: Seq[Sequence], ks: Seq[int]) -> list[list[int]]:
        """Up to ks[i] greedy drafts per sequence, all sequences batched per depth."""
        out: list[list[int]] = [[] for _ in seqs]
        ready = self._ready(seqs, ks)
        if ready is None:
            return out
        rows, h, tok = ready
        for depth in range(max(ks[i] for i in rows)):
            h, logits = self._step(h, tok)
            tok = self.head.draft_vocab[logits.argmax(dim=-1)]
            for j, t in zip(rows, tok.tolist(), strict=True):
                if depth < ks[j]:
                    out[j].append(t)
        return out

    @torch.inference_mode()
    def propose_tree(
        self, seqs: Seq[Sequence], ks: Seq[int], width: int
    ) -> list[tuple[list[int], list[int]]]:
        """Per sequence a tree of at most ks[i] nodes: the head's top-`width` first tokens as
        root children, the most likely one continued greedily as deep as the budget allows
        after one node for each other child: (tokens, parents), topological order."""
        out: list[tuple[list[int], list[int]]] = [([], []) for _ in seqs]
        ready = self._ready(seqs, ks)
        if ready is None:
            return out
        rows, h, tok = ready
        h, logits = self._step(h, tok)
        top = self.head.draft_vocab[logits.topk(min(width, logits.shape[-1])).indices]
        firsts = top.tolist()
        siblings = [min(len(firsts[0]) - 1, ks[j] - 1) for j in rows]
        deep = [ks[j] - n for j, n in zip(rows, siblings, strict=True)]
        chains: list[list[int]] = [[f[0]] for f in firsts]
        tok = top[:, 0]
        for depth in range(1, max(deep)):
            h, logits = self._step(h, tok)
            tok = self.head.draft_vocab[logits.argmax(dim=-1)]
            for chain, t, d in zip(chains, tok.tolist(), deep, strict=True):
                if depth < d:
                    chain.append(t)
        for i, j in enumerate(rows):  # the chain (each node below the last), then siblings
            chain, extra = chains[i], firsts[i][1 : 1 + siblings[i]]
            parents = [-1, *range(len(chain) - 1)] + [-1] * len(extra)
            out[j] = (chain + extra, parents)
        return out


def head_meta(path: str | Path) -> dict[str, str]:
    """The metadata a head was saved with (training settings and measured acceptance)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def describe(path: str | Path) -> str:
    """One line about a saved head (for logs and docs)."""
    return json.dumps(head_meta(path))

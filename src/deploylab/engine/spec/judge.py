"""Judge decoding (Bachmann et al. 2025): keep "good enough" drafts speculative sampling rejects.

A draft token is kept if speculative sampling accepts it OR a small linear judge on the
target's last-layer hidden state h at that token fires: sigmoid(w^T h + b) > delta. The
longest all-kept prefix is emitted, then a correction token norm(max(0, p - q)) at the first
position where both said no (or a bonus token from p). The output no longer follows p: judge
decoding trades exactness for speed. A judge that never fires is plain speculative sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from deploylab.engine.spec.sampling import ChainResult, gather_last, uniform
from deploylab.engine.spec.single import check_chain, finish_chain
from deploylab.errors import InvalidRequestError, ModelLoadError


class JudgeHead(nn.Module):
    """A linear judge: score(h) = w^T h + b; it fires when sigmoid(score) > delta."""

    def __init__(self, hidden_size: int, delta: float = 0.5) -> None:
        super().__init__()
        if hidden_size < 1:
            raise InvalidRequestError(f"hidden_size must be >= 1; got {hidden_size}.")
        self.linear = nn.Linear(hidden_size, 1)
        self.delta = float(delta)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states the judge reads."""
        return self.linear.in_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Probability that each token is acceptable: sigmoid(w^T h + b), shape hidden[:-1]."""
        if hidden.shape[-1] != self.hidden_size:
            raise InvalidRequestError(
                f"hidden states have width {hidden.shape[-1]}; this judge was trained on "
                f"{self.hidden_size}. Use the hidden states of the model the judge belongs to.",
                param="hidden",
            )
        w = self.linear.weight.to(hidden.dtype)
        b = self.linear.bias.to(hidden.dtype)
        return torch.sigmoid(hidden @ w.squeeze(0) + b)

    def fires(self, hidden: torch.Tensor, delta: float | None = None) -> torch.Tensor:
        """Bool mask: sigmoid(w^T h + b) > delta (default: the head's own delta)."""
        return self(hidden) > (self.delta if delta is None else delta)

    def fit(
        self,
        hidden: torch.Tensor,
        ok: torch.Tensor,
        *,
        l2: float = 1e-3,
        steps: int = 200,
    ) -> float:
        """Train by L2-regularised logistic regression (L-BFGS) on (h, ok) pairs.

        hidden: (N, H); ok: (N,) bool or 0/1 labels. Returns the final mean training loss.
        """
        if hidden.dim() != 2 or hidden.shape[1] != self.hidden_size:
            raise InvalidRequestError(
                f"hidden must be (N, {self.hidden_size}); got {tuple(hidden.shape)}.",
                param="hidden",
            )
        y = ok.to(torch.float32).reshape(-1)
        if y.shape[0] != hidden.shape[0]:
            raise InvalidRequestError("ok must hold one label per hidden state.", param="ok")
        if not bool(((y == 0) | (y == 1)).all()):
            raise InvalidRequestError("ok labels must be 0/1 or bool.", param="ok")
        x = hidden.detach().to(torch.float32)
        opt = torch.optim.LBFGS(self.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
        loss_fn = nn.BCEWithLogitsLoss()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = self.linear(x).squeeze(-1)
            loss = loss_fn(logits, y) + l2 * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return float(loss_fn(self.linear(x).squeeze(-1), y))

    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> None:
        """Write the judge next to its model: weights in safetensors, size and delta (and
        `extra`, e.g. how it was trained) as metadata."""
        meta = {**(extra or {}), "hidden_size": str(self.hidden_size), "delta": repr(self.delta)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> JudgeHead:
        """Read a judge saved by `save`; raises ModelLoadError for a missing or foreign file."""
        p = Path(path)
        if not p.is_file():
            raise ModelLoadError(f"no judge file at {p}; train one and save it with save().")
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(str(p), device=str(map_location))
            head = cls(int(meta["hidden_size"]), float(meta["delta"]))
            head.load_state_dict(tensors)
        except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
            raise ModelLoadError(
                f"{p} is not a judge head saved by JudgeHead.save ({exc}); retrain and save it."
            ) from exc
        return head.to(map_location)


def judge_verify(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    judged: torch.Tensor,
    generator: torch.Generator | None = None,
) -> ChainResult:
    """Speculative sampling where a position is also kept when `judged` (B, gamma) is True.

    `judged` is the judge's verdict on each draft token (e.g. `JudgeHead.fires(h)`). Random
    numbers are drawn first, so runs with the same seed share them across judges and deltas.
    """
    _, gamma, _ = check_chain(p, q, drafts)
    d = drafts.to(torch.long)
    if tuple(judged.shape) != tuple(d.shape) or judged.dtype != torch.bool:
        raise InvalidRequestError(
            f"judged must be a bool tensor shaped like drafts {tuple(d.shape)}.", param="judged"
        )
    u = uniform(tuple(d.shape), p, generator)
    accept = (u * gather_last(q, d) < gather_last(p[:, :gamma], d)) | judged
    return finish_chain(d, accept, p, q, generator)

"""Small sampling helpers shared by every verification rule (device-agnostic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this mass a residual counts as empty: rejection then happens with probability ~0.
_EMPTY = 1e-12


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one index per row of `probs` (shape (..., V)); rows need not be normalised."""
    flat = probs.reshape(-1, probs.shape[-1]).clamp_min(0)
    out = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return out.reshape(probs.shape[:-1])


def uniform(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform [0, 1) numbers on `like`'s device and dtype."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) on the last axis; rows where p <= q everywhere fall back to p.

    The fallback is never sampled in exact arithmetic (p <= q everywhere means p == q, so
    nothing is rejected), but it keeps rounding noise from producing an all-zero row.
    """
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > _EMPTY, r / mass.clamp_min(_EMPTY), p)


def gather_last(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[..., index] for an index tensor shaped like x without its last axis."""
    return x.gather(-1, index.unsqueeze(-1)).squeeze(-1)


@dataclass
class ChainResult:
    """Outcome of verifying one chain of draft tokens per batch row.

    tokens: (B, gamma + 1) emitted tokens, padded with -1 after `num_emitted`.
    num_accepted: (B,) draft tokens kept; num_emitted = num_accepted + 1 (the correction or
    bonus token sampled by the target).
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor

    @property
    def num_emitted(self) -> torch.Tensor:
        """Tokens emitted per row: the kept drafts plus one token from the target."""
        return self.num_accepted + 1


@dataclass
class DraftChoice:
    """Outcome of one multi-draft verification step per batch row.

    token: (B,) emitted token; accepted_index: (B,) which draft was kept, or -1 when every
    draft was rejected and `token` came from the rule's residual distribution.
    """

    token: torch.Tensor
    accepted_index: torch.Tensor

    @property
    def accepted(self) -> torch.Tensor:
        """(B,) bool: whether some draft was kept."""
        return self.accepted_index >= 0

"""Input checks shared by the verification rules: clear errors for tensors a caller got wrong."""

from __future__ import annotations

import torch

from deploylab.errors import InvalidRequestError

_TOL = 1e-4


def check_probs(name: str, probs: torch.Tensor, *, ndim: int | None = None) -> None:
    """Raise `InvalidRequestError` unless `probs` holds probability vectors on its last axis."""
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise InvalidRequestError(
            f"{name} must be a floating-point torch.Tensor of probabilities; got "
            f"{type(probs).__name__}. Pass softmax(logits), not logits or token ids.",
            param=name,
        )
    if ndim is not None and probs.dim() != ndim:
        raise InvalidRequestError(
            f"{name} must have {ndim} dimensions; got shape {tuple(probs.shape)}.", param=name
        )
    if probs.numel() == 0:
        raise InvalidRequestError(f"{name} is empty (shape {tuple(probs.shape)}).", param=name)
    if bool((probs < 0).any()) or not bool(torch.isfinite(probs).all()):
        raise InvalidRequestError(
            f"{name} has negative or non-finite entries; pass probabilities (softmax output).",
            param=name,
        )
    sums = probs.sum(-1)
    if bool(((sums - 1).abs() > _TOL).any()):
        worst = float(sums[(sums - 1).abs().argmax()]) if sums.dim() else float(sums)
        raise InvalidRequestError(
            f"{name} rows must sum to 1 (one row sums to {worst:.6f}); normalise with softmax "
            "or divide by the row sum.",
            param=name,
        )


def check_tokens(name: str, tokens: torch.Tensor, vocab: int, shape: tuple[int, ...]) -> None:
    """Raise `InvalidRequestError` unless `tokens` is an integer tensor of `shape` in range."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise InvalidRequestError(
            f"{name} must be an integer torch.Tensor of token ids.", param=name
        )
    if tuple(tokens.shape) != shape:
        raise InvalidRequestError(
            f"{name} has shape {tuple(tokens.shape)}; expected {shape}.", param=name
        )
    if tokens.numel() and (bool((tokens < 0).any()) or bool((tokens >= vocab).any())):
        raise InvalidRequestError(
            f"{name} holds ids outside the vocabulary [0, {vocab}).", param=name
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise `InvalidRequestError` if the given tensors live on different devices."""
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {t.device}" for k, t in tensors.items())
        raise InvalidRequestError(f"tensors must share one device; got {listing}.")

"""The real SmolLM2-135M-Instruct weights and tokenizer, parsed from the GGUF once per test
process and shared by every directory's fixtures (parsing costs seconds of CPU and ~0.5 GiB
each time). Callers must not change the weights."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

MODEL = "smollm2-135m-instruct"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: test ops are small, and on a shared 2-core machine a
    second OpenMP thread mostly waits for a busy core (10x slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def smol_path() -> Path:
    """The GGUF file of the installed model package."""
    from deploylab.catalog import resolve_model

    return resolve_model(MODEL)


@functools.cache
def smol_model() -> Any:
    """The model in float32 on the CPU (parsed on one torch thread)."""
    from deploylab.engine.models.loader import load_model

    with one_thread():
        model, _ = load_model(smol_path(), torch.float32, torch.device("cpu"))
    return model


@functools.cache
def smol_tokenizer() -> Any:
    """The model's tokenizer (with its chat template), as the engine loads it."""
    from deploylab.engine.tokenizer import load_tokenizer

    return load_tokenizer(smol_path())

"""Tokenizer loading through `transformers.AutoTokenizer` (HF directories and GGUF files)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deploylab.errors import ModelLoadError

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: Path) -> Any | None:
    """The tokenizer (with its chat template) stored with a model; None for an HF directory
    that has no tokenizer files (then only token-id prompts are accepted)."""
    from transformers import AutoTokenizer

    try:
        if path.is_file():
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if not any((path / name).is_file() for name in _TOKENIZER_FILES):
            logger.warning("%s has no tokenizer files: only token-id prompts will work", path)
            return None
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types for broken tokenizer files
        raise ModelLoadError(f"Cannot load the tokenizer of {path}: {exc}") from exc


def eos_token_ids(tokenizer: Any | None) -> list[int]:
    """The tokenizer's end-of-sequence id(s)."""
    if tokenizer is None or tokenizer.eos_token_id is None:
        return []
    return [int(tokenizer.eos_token_id)]

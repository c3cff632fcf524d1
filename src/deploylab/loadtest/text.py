"""Prompt text with a chosen number of tokens.

Prompts are sequences of words separated by single spaces. With a tokenizer (`--tokenizer`)
we keep only words that are one token both alone and after a space; tokenizers split text at
spaces before merging (GPT-2-style pre-tokenizers, SentencePiece's whitespace split), so n such
words are exactly n tokens, and texts joined by a space add up. Without a tokenizer we use a
shipped list of common English words, one token each for SmolLM2 and usually for other
English BPE tokenizers: an approximation (docs/loadtest.md).

Request-unique texts start with up to three words that spell the request's number, so no two
requests share a prefix unless the scenario means them to (a shared system prompt, a document).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from deploylab.errors import UsageError

_WORD = re.compile(r"^[A-Za-z]{2,12}$")
_MIN_WORDS = 64
_UNIQUE_WORDS = 3


@dataclass(frozen=True)
class WordSet:
    """Words that are one token each; picklable, so worker processes generate text too."""

    head: tuple[str, ...]  # one token at the start of a text and after a space
    body: tuple[str, ...]  # one token after a space
    exact: bool  # verified against the target's tokenizer
    source: str  # the tokenizer's name, or "approximate"

    def words(self, rng: np.random.Generator, n: int, unique: int | None = None) -> str:
        """A text of `n` tokens; with `unique`, its first words encode that number."""
        if n <= 0:
            return ""
        out: list[str] = []
        if unique is not None:
            value = unique
            for _ in range(min(n, _UNIQUE_WORDS)):
                value, digit = divmod(value, len(self.head))
                out.append(self.head[digit])
        else:
            out.append(self.head[int(rng.integers(len(self.head)))])
        rest = n - len(out)
        if rest > 0:
            body = self.body
            out.extend(body[i] for i in rng.integers(len(body), size=rest).tolist())
        return " ".join(out)


def join(*parts: str) -> str:
    """Join texts with single spaces (token counts add up), skipping empty parts."""
    return " ".join(p for p in parts if p)


def approximate_words() -> WordSet:
    """The shipped word list, for runs without a tokenizer."""
    path = resources.files("deploylab.loadtest").joinpath("data/words.json")
    words = tuple(json.loads(path.read_text(encoding="utf-8"))["words"])
    return WordSet(head=words, body=words, exact=False, source="approximate")


def _encode_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def words_for_tokenizer(tokenizer: Any, name: str) -> WordSet:
    """Build and verify a word set whose words are single tokens for `tokenizer`."""
    vocab_ids = sorted(tokenizer.get_vocab().values())
    decoded = tokenizer.batch_decode([[i] for i in vocab_ids])
    candidates = sorted({t.strip() for t in decoded if _WORD.match(t.strip())})
    if candidates:
        spaced = _encode_lengths(tokenizer, [" " + w for w in candidates])
        body = [w for w, n in zip(candidates, spaced, strict=True) if n == 1]
        alone = _encode_lengths(tokenizer, body) if body else []
        head = [w for w, n in zip(body, alone, strict=True) if n == 1]
    else:
        body, head = [], []
    if len(head) < _MIN_WORDS or len(body) < _MIN_WORDS:
        raise UsageError(
            f"Tokenizer '{name}' has too few whole-word tokens ({len(head)}) to build prompts of "
            "exact length. Run without --tokenizer (approximate lengths) or use a word-level "
            "BPE or SentencePiece tokenizer."
        )
    words = WordSet(head=tuple(head), body=tuple(body), exact=True, source=name)
    rng = np.random.default_rng(0)
    lengths = [1, 7, 100, 1000]
    texts = [words.words(rng, n, unique=i) for i, n in enumerate(lengths)]
    if _encode_lengths(tokenizer, texts) != lengths:
        raise UsageError(
            f"Tokenizer '{name}' does not split text at spaces, so deploylab cannot build "
            "prompts of exact length for it. Run without --tokenizer (approximate lengths)."
        )
    return words


def load_tokenizer(spec: str) -> tuple[Any, str]:
    """Load a tokenizer from a local directory, a .gguf file or a catalog model name.

    Never downloads (local files only). Returns the tokenizer and a display name.
    """
    from deploylab.catalog import resolve_model
    from deploylab.errors import ModelNotFoundError

    path = Path(spec).expanduser()
    if not path.exists():
        try:
            path = resolve_model(spec)
        except ModelNotFoundError as exc:
            raise UsageError(
                f"Unknown tokenizer '{spec}': give a local tokenizer directory, a .gguf file or "
                f"a known model name (deploylab models list). {exc}"
            ) from exc
    from transformers import AutoTokenizer

    try:
        if path.is_file():
            tokenizer = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a bad folder or file
        raise UsageError(
            f"Cannot load a tokenizer from {path}: {exc}. Give a folder with tokenizer.json "
            "(or tokenizer.model), or a .gguf file."
        ) from exc
    return tokenizer, spec


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of generated texts (for servers that report no usage)."""
    if not texts:
        return []
    return _encode_lengths(tokenizer, texts)

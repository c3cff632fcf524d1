"""Incremental detokenisation: text for each new token without re-decoding the whole output.

Each step decodes a short window twice, with and without the new tokens, and reports the
difference. The window starts a few tokens back (the prompt's tail at first), so tokenizers
that drop a word's leading space when it starts a decode still produce it. Text ending in an
incomplete UTF-8 character (U+FFFD) is held until the character completes.
"""

from __future__ import annotations

from typing import Any

CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns one request's generated tokens into text, a delta at a time."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix = 0  # window start
        self.read = len(self.ids)  # tokens before this index are already in the text

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )
        return text

    def _delta(self, force: bool) -> str:
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and (force or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        if force:
            self.prefix, self.read = self.read, len(self.ids)
        return ""

    def add(self, token_id: int) -> str:
        """Append a token; return the text that became final."""
        self.ids.append(token_id)
        return self._delta(force=False)

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end), for the last delta."""
        return self._delta(force=True)

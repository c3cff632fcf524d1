"""Prompt token counts, and block hashes for the prefix cache.

With a tokenizer configured (`tokenizer:` in the config, `--tokenizer`), prompts are counted
the way a server of that model counts them: chat messages through the tokenizer's chat
template, text through the tokenizer. Without one, text is counted by a documented rule:
every run of up to 9 ASCII letters is one token, every digit one, every other non-space
character one (`hello, world 42` = hello , world 4 2 = 5). On the load tester's own prompts
(common English words, each one token) this matches SmolLM2's tokenizer exactly; on English
technical prose it is within a few per cent overall (see docs/sim.md for the measurement). A
completions prompt sent as token ids is counted exactly. Without a tokenizer, chat messages
are rendered as `<|role|>\\ncontent\\n` each, then `<|assistant|>\\n`, and counted the same
way (5 tokens of template per message, about what ChatML templates add).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_PIECE = re.compile(r"[A-Za-z]{1,9}|\d|[^\sA-Za-z\d]")


def text_pieces(text: str) -> list[str]:
    """The pseudo-tokens of a text (see the module docstring)."""
    return _PIECE.findall(text)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def render_chat(messages: list[dict[str, Any]]) -> str:
    """A chat-template-like rendering of OpenAI chat messages, for counting."""
    parts = [f"<|{m.get('role', 'user')}|>\n{_content(m)}\n" for m in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)


class PromptCounter:
    """Turns a prompt into tokens: a real tokenizer's ids when given, else pseudo-tokens."""

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tokenizer = tokenizer

    def text(self, text: str) -> Sequence[Any]:
        """The tokens of a completions prompt."""
        if self.tokenizer is None:
            return text_pieces(text)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def chat(self, messages: list[dict[str, Any]]) -> Sequence[Any]:
        """The tokens of chat messages with the generation prompt, as the server renders them."""
        tok = self.tokenizer
        if tok is None:
            return text_pieces(render_chat(messages))
        plain = [{"role": str(m.get("role", "user")), "content": _content(m)} for m in messages]
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(plain, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        return self.text(render_chat(plain))


def block_hashes(tokens: Sequence[Any], block_size: int, namespace: str) -> list[int]:
    """Chained hashes of every full block of tokens (a block's hash covers its whole prefix)."""
    hashes = []
    h = hash(namespace)
    for start in range(0, len(tokens) - block_size + 1, block_size):
        h = hash((h, *tokens[start : start + block_size]))
        hashes.append(h)
    return hashes

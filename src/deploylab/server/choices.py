"""One response choice as it builds up: text, logprobs (with `text_offset`), tool calls.

A request has `len(prompts) * n` choices; choice `i * n + k` is sample k of prompt i (the
OpenAI and vLLM order). `ChoiceState` accumulates one choice's deltas and formats it as a
whole message (`full`) or as a streaming chunk (`chunk`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploylab.engine.outputs import RequestDelta, TokenLogprobs
from deploylab.server.constraints import Constraint, parse_tool_calls


@dataclass
class ChoiceState:
    """Everything one choice has received so far."""

    index: int
    chat: bool
    top_logprobs: int | None  # None: no logprobs in the response
    constraint: Constraint
    echo: str | None = None  # completions with `echo`: the prompt text, sent first
    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    text_offset: int = 0  # completions: where the next token's text starts
    echo_sent: bool = False
    first_prompt_token: int | None = None  # its id: its logprobs entry is None

    def add(self, delta: RequestDelta) -> None:
        """Take one engine delta of this choice."""
        if self.echo is not None and delta.prompt_logprobs is not None:
            self.logprobs.extend(delta.prompt_logprobs)
        self.text += delta.new_text
        self.num_tokens += len(delta.new_token_ids)
        self.logprobs.extend(delta.logprobs or [])
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    def _tool_calls(self) -> list[dict[str, Any]] | None:
        if not self.constraint.tools or self.finish_reason not in ("stop", None):
            return None
        return parse_tool_calls(self.constraint, self.text)

    def _finish(self, calls: list[dict[str, Any]] | None) -> str | None:
        if calls and self.constraint.mode != "named":  # OpenAI: a forced function "stop"s
            return "tool_calls"
        return self.finish_reason

    def full(self, decode: Any) -> dict[str, Any]:
        """The finished choice of a non-streaming response."""
        lp = self._take_logprobs(decode)
        if not self.chat:
            text = (self.echo or "") + self.text
            return {
                "index": self.index,
                "text": text,
                "logprobs": lp,
                "finish_reason": self.finish_reason,
            }
        calls = self._tool_calls()
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else self.text}
        if calls:
            message["tool_calls"] = calls
        return {
            "index": self.index,
            "message": message,
            "logprobs": lp,
            "finish_reason": self._finish(calls),
        }

    def chunk(self, text: str, decode: Any) -> dict[str, Any] | None:
        """A streaming chunk for text received since the last one (None: nothing to send).
        Tool-call requests send everything in one chunk when the choice ends."""
        if self.chat and self.constraint.tools:
            if self.finish_reason is None:
                return None
            calls = self._tool_calls()
            body: dict[str, Any] = {"content": None if calls else self.text}
            if calls:
                body["tool_calls"] = [call | {"index": k} for k, call in enumerate(calls)]
            lp = self._take_logprobs(decode)
            return {
                "index": self.index,
                "delta": body,
                "logprobs": lp,
                "finish_reason": self._finish(calls),
            }
        lp = self._take_logprobs(decode)
        if not text and self.finish_reason is None and not lp_has_entries(lp):
            return None
        if self.chat:
            delta = {"content": text}
            return {
                "index": self.index,
                "delta": delta,
                "logprobs": lp,
                "finish_reason": self.finish_reason,
            }
        if self.echo is not None and not self.echo_sent:
            text, self.echo_sent = self.echo + text, True
        return {
            "index": self.index,
            "text": text,
            "logprobs": lp,
            "finish_reason": self.finish_reason,
        }

    def _take_logprobs(self, decode: Any) -> dict[str, Any] | None:
        """Logprobs received since the last call, in the chat or the legacy completions form."""
        if self.top_logprobs is None:
            return None
        entries, self.logprobs = self.logprobs, []
        if self.chat:
            return {"content": [_chat_entry(e, decode) for e in entries if e is not None]}
        tokens = [decode([e.token_id]) for e in entries if e is not None]
        if entries and entries[0] is None:  # the first prompt token: no context, no logprob
            tokens.insert(0, self._first_prompt_token(decode))
        offsets = []
        for tok in tokens:
            offsets.append(self.text_offset)
            self.text_offset += len(tok)
        return {
            "tokens": tokens,
            "token_logprobs": [None if e is None else e.logprob for e in entries],
            "top_logprobs": [
                None if e is None else {decode([t]): lp for t, lp in e.top} for e in entries
            ],
            "text_offset": offsets,
        }

    def _first_prompt_token(self, decode: Any) -> str:
        return decode([self.first_prompt_token]) if self.first_prompt_token is not None else ""


def lp_has_entries(lp: dict[str, Any] | None) -> bool:
    """True when a logprobs object carries at least one token."""
    if lp is None:
        return False
    return bool(lp.get("content") or lp.get("tokens"))


def _chat_entry(e: TokenLogprobs, decode: Any) -> dict[str, Any]:
    tok = decode([e.token_id])
    tops = [
        {"token": decode([t]), "logprob": lp, "bytes": list(decode([t]).encode())}
        for t, lp in e.top
    ]
    return {"token": tok, "logprob": e.logprob, "bytes": list(tok.encode()), "top_logprobs": tops}

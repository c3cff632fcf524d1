"""Structured output: a grammar masks, at every step, the tokens that cannot continue it.

A request's `SamplingParams.structured_output` (a JSON schema, any JSON object, a Lark
grammar or a regex) is compiled by llguidance into a matcher when the request is made (so a
bad schema is a 400 before anything runs). The sampler calls `StructuredState.mask` on the
request's logits row; the engine calls `advance` with the token it appended, which reports
when the grammar has ended. Why llguidance rather than xgrammar: docs/server.md.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from deploylab.errors import InvalidRequestError

logger = logging.getLogger(__name__)

StructuredKind = Literal["json_schema", "json_object", "lark", "regex"]

# JSON as `json.dumps` writes it: one space after ',' and ':', no other whitespace (a small
# model given free whitespace may emit newlines until max_tokens).
JSON_OPTIONS: dict[str, Any] = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
}


@dataclass(frozen=True)
class StructuredOutput:
    """What a request's output must match. `spec`: the JSON schema (a JSON string), the Lark
    grammar or the regex; unused for `json_object`. `param` names the request field that
    asked for it, for error messages."""

    kind: StructuredKind
    spec: str = ""
    param: str = "response_format"

    def grammar(self) -> str:
        """The llguidance grammar text."""
        from llguidance import LLMatcher

        if self.kind == "lark":
            return LLMatcher.grammar_from_lark(self.spec)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.spec)
        schema = '{"type": "object"}' if self.kind == "json_object" else self.spec
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidRequestError(f"Invalid JSON schema: {exc}", param=self.param) from None


class StructuredState:
    """One sample's grammar position: masks logits rows and advances by chosen tokens."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """Bool [vocab_size]: the tokens the grammar allows next."""
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")
        return torch.from_numpy(bits[: self.vocab_size].view(np.bool_))

    def mask(self, row: torch.Tensor) -> None:
        """Set the logits of forbidden tokens to -inf, in place on one row [V]."""
        allowed = self.allowed().to(row.device, non_blocking=True)
        row[: self.vocab_size].masked_fill_(~allowed, float("-inf"))
        row[self.vocab_size :] = float("-inf")

    def advance(self, token: int) -> bool:
        """Consume the appended token; True when the grammar has ended (stop here)."""
        if not self.matcher.consume_token(token):
            logger.warning(
                "structured output: token %d rejected: %s", token, self.matcher.get_error()
            )
            return True
        return bool(self.matcher.is_stopped())

    def fork(self) -> StructuredState:
        """An independent copy at the same position (for the samples of `n > 1`)."""
        return StructuredState(self.matcher.deep_copy(), self.vocab_size)


class StructuredBackend:
    """Builds matchers for one tokenizer. Converting the tokenizer for llguidance takes
    about 0.3 s, so it happens once, at the first structured request (thread-safe)."""

    def __init__(self, tokenizer: Any | None, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._lltok: Any = None
        self._lock = threading.Lock()

    def _ll_tokenizer(self, param: str) -> Any:
        with self._lock:
            if self._lltok is None:
                if self.tokenizer is None:
                    raise InvalidRequestError(
                        "Structured output needs the model's tokenizer; this model has none.",
                        param=param,
                    )
                import llguidance.hf

                self._lltok = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)
            return self._lltok

    def start(self, spec: StructuredOutput) -> StructuredState:
        """A fresh matcher for `spec`; an invalid schema or grammar raises a 400-style error."""
        from llguidance import LLMatcher

        lltok = self._ll_tokenizer(spec.param)
        matcher = LLMatcher(lltok, spec.grammar(), log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(
                f"Cannot use this {spec.kind} for structured output: {matcher.get_error()}",
                param=spec.param,
            )
        return StructuredState(matcher, self.vocab_size)


def json_schema_text(schema: Any) -> str:
    """A schema object as the JSON text `StructuredOutput` carries."""
    return schema if isinstance(schema, str) else json.dumps(schema)
